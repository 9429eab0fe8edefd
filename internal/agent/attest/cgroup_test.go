package attest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const (
	testPod       = "2c48913c-b29f-11e7-9350-020968147796"
	testContainer = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
)

// The files under testdata/cgroup follow the layout each runtime and cgroup
// driver writes, for a pod and its container.
func TestParseCgroupFiles(t *testing.T) {
	tests := map[string]struct {
		want Workload
		ok   bool
	}{
		"v1-cgroupfs-docker.txt":         {want: Workload{testPod, testContainer}, ok: true},
		"v1-systemd-containerd.txt":      {want: Workload{testPod, testContainer}, ok: true},
		"v1-systemd-docker.txt":          {want: Workload{testPod, testContainer}, ok: true},
		"v2-systemd-containerd.txt":      {want: Workload{testPod, testContainer}, ok: true},
		"v2-systemd-crio-guaranteed.txt": {want: Workload{testPod, testContainer}, ok: true},
		"v2-cgroupfs-containerd.txt":     {want: Workload{testPod, testContainer}, ok: true},
		"v2-kind-node.txt":               {want: Workload{testPod, testContainer}, ok: true},
		"v2-other-cgroup-namespace.txt":  {want: Workload{testPod, testContainer}, ok: true},
		// conmon runs in the pod's cgroup but is no container of it.
		"v2-crio-conmon.txt":  {want: Workload{PodUID: testPod}, ok: true},
		"v2-host-service.txt": {},
		"v1-host-session.txt": {},
	}
	files, _ := filepath.Glob("testdata/cgroup/*.txt")
	if len(files) != len(tests) {
		t.Errorf("%d files under testdata/cgroup, %d cases", len(files), len(tests))
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "cgroup", name))
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := ParseCgroup(b)
			if err != nil || ok != tc.ok || got != tc.want {
				t.Errorf("got %+v, %v, %v; want %+v, %v", got, ok, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseCgroupRefuses(t *testing.T) {
	other := strings.Replace(testPod, "2c48", "3d59", 1)
	tests := map[string]struct {
		content string
		wantErr string
	}{
		"two pods": {
			content: "2:memory:/kubepods/pod" + testPod + "/" + testContainer + "\n1:cpu:/kubepods/pod" + other + "/" + testContainer + "\n",
			wantErr: "line 2: pod " + other + ", where another line names pod " + testPod,
		},
		"two containers": {
			content: "2:memory:/kubepods/pod" + testPod + "/" + testContainer + "\n1:cpu:/kubepods/pod" + testPod + "/" + strings.Repeat("a", 64) + "\n",
			wantErr: "line 2: container " + strings.Repeat("a", 64),
		},
		"not a cgroup line": {content: "hello\n", wantErr: `line 1: "hello" is not hierarchy-ID:controllers:path`},
		"a relative path":   {content: "0::kubepods\n", wantErr: "line 1:"},
		"too long":          {content: strings.Repeat("0::/a\n", 20000), wantErr: "over the 65536 a kernel writes"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ok, err := ParseCgroup([]byte(tc.content))
			if err == nil || ok || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got ok=%v, err=%v; want an error containing %q", ok, err, tc.wantErr)
			}
		})
	}
}

var (
	uuidForm      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	containerForm = regexp.MustCompile(`^([0-9a-f]{64})?$`)
)

func FuzzParseCgroup(f *testing.F) {
	files, _ := filepath.Glob("testdata/cgroup/*.txt")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("0::/kubepods/pod" + testPod + "/\n0::/\n"))
	f.Fuzz(func(t *testing.T, content []byte) {
		w, ok, err := ParseCgroup(content)
		if err != nil || !ok {
			if w != (Workload{}) {
				t.Errorf("no workload, yet %+v", w)
			}
			return
		}
		if !uuidForm.MatchString(w.PodUID) || !containerForm.MatchString(w.ContainerID) {
			t.Errorf("workload %+v is not a pod UID and a container ID", w)
		}
	})
}
