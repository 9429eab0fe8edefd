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
// driver writes, for a pod and its container; the forged-* files are
// cgroups a process outside any pod can make for itself, or a container
// under its own, and name a victim pod.
func TestParseCgroupFiles(t *testing.T) {
	tests := map[string]struct {
		kubeletRoot string
		want        Workload
		ok          bool
		wantErr     string
	}{
		"v1-cgroupfs-docker.txt":         {want: Workload{testPod, testContainer}, ok: true},
		"v1-cgroupfs-containerd.txt":     {want: Workload{testPod, testContainer}, ok: true},
		"v1-systemd-containerd.txt":      {want: Workload{testPod, testContainer}, ok: true},
		"v1-systemd-docker.txt":          {want: Workload{testPod, testContainer}, ok: true},
		"v2-systemd-containerd.txt":      {want: Workload{testPod, testContainer}, ok: true},
		"v2-systemd-crio-guaranteed.txt": {want: Workload{testPod, testContainer}, ok: true},
		"v2-cgroupfs-containerd.txt":     {want: Workload{testPod, testContainer}, ok: true},
		// kind's kubelet runs with --cgroup-root=/kubelet.
		"v2-kind-node.txt":              {kubeletRoot: "/kubelet", want: Workload{testPod, testContainer}, ok: true},
		"v2-other-cgroup-namespace.txt": {want: Workload{testPod, testContainer}, ok: true},
		"v2-host-service.txt":           {},
		"v1-host-session.txt":           {},
		// conmon runs in the pod's cgroup but is no container of it.
		"v2-crio-conmon.txt":         {wantErr: "names a pod, but not where the kubelet puts a pod's containers"},
		"v1-cgroupfs-static-pod.txt": {wantErr: "line 1: /kubepods/burstable/pod6c1b3e9a24b5f0d7e8a9c3b2d1f04e57/" + testContainer + " is the cgroup of a static pod"},
		"forged-v2-delegated-subtree.txt": {
			wantErr: "line 1: /user.slice/user-1000.slice/user@1000.service/kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-" + testContainer + ".scope names a pod, but not where the kubelet puts a pod's containers",
		},
		"forged-v1-delegated-unified.txt":                {wantErr: "line 3: /user.slice/user-1000.slice/user@1000.service/kubepods/besteffort/pod" + testPod},
		"forged-v2-pod-without-container.txt":            {wantErr: "is pod " + testPod + "'s own cgroup, no container's"},
		"forged-v2-nested-in-a-container.txt":            {wantErr: "names a pod, but not where the kubelet puts"},
		"forged-v1-two-pods.txt":                         {wantErr: "line 2: pod 3d59913c-b29f-11e7-9350-020968147796, where another line names pod " + testPod},
		"forged-v2-other-namespace-outside-kubepods.txt": {wantErr: "line 1: /../../../../user.slice/"},
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
			root := tc.kubeletRoot
			if root == "" {
				root = DefaultKubeletCgroupRoot
			}
			got, ok, err := ParseCgroup(b, root)
			switch {
			case tc.wantErr != "":
				if err == nil || ok || got != (Workload{}) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %+v, %v, %v; want an error containing %q", got, ok, err, tc.wantErr)
				}
			case err != nil || ok != tc.ok || got != tc.want:
				t.Errorf("got %+v, %v, %v; want %+v, %v", got, ok, err, tc.want, tc.ok)
			}
		})
	}
}

// Every shape of the kubelet's, for both drivers and each QoS class, under
// its cgroup root or from another cgroup namespace, is accepted; each
// forged shape is refused.
func TestParseCgroupShapes(t *testing.T) {
	uid := strings.ReplaceAll(testPod, "-", "_")
	other := strings.Repeat("a", 64)
	tests := map[string]struct {
		kubeletRoot string
		path        string
		want        Workload
		ok          bool
		wantErr     string
	}{
		"cgroupfs, Guaranteed":                        {path: "/kubepods/pod" + testPod + "/" + testContainer, want: Workload{testPod, testContainer}, ok: true},
		"cgroupfs, BestEffort":                        {path: "/kubepods/besteffort/pod" + testPod + "/" + testContainer, want: Workload{testPod, testContainer}, ok: true},
		"cgroupfs, Burstable":                         {path: "/kubepods/burstable/pod" + testPod + "/" + testContainer, want: Workload{testPod, testContainer}, ok: true},
		"cgroupfs, CRI-O":                             {path: "/kubepods/burstable/pod" + testPod + "/crio-" + testContainer, want: Workload{testPod, testContainer}, ok: true},
		"systemd, Guaranteed":                         {path: "/kubepods.slice/kubepods-pod" + uid + ".slice/cri-containerd-" + testContainer + ".scope", want: Workload{testPod, testContainer}, ok: true},
		"systemd, Docker":                             {path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice/docker-" + testContainer + ".scope", want: Workload{testPod, testContainer}, ok: true},
		"under --cgroup-root":                         {kubeletRoot: "/kubelet", path: "/kubelet/kubepods/besteffort/pod" + testPod + "/" + testContainer, want: Workload{testPod, testContainer}, ok: true},
		"systemd, a deep root":                        {kubeletRoot: "/k8s/node-1", path: "/k8s.slice/k8s-node_1.slice/k8s-node_1-kubepods.slice/k8s-node_1-kubepods-pod" + uid + ".slice/crio-" + testContainer + ".scope", want: Workload{testPod, testContainer}, ok: true},
		"another namespace, from the kubepods cgroup": {path: "/../../../kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice/crio-" + testContainer + ".scope", want: Workload{testPod, testContainer}, ok: true},
		"another namespace, a sibling pod (cgroupfs)": {path: "/../../pod" + testPod + "/" + testContainer, want: Workload{testPod, testContainer}, ok: true},
		"the root of a hierarchy":                     {path: "/"},
		"a plain Docker container":                    {path: "/system.slice/docker-" + testContainer + ".scope"},

		"a pod under the host's root when the kubelet's is /kubelet": {
			kubeletRoot: "/kubelet", path: "/kubepods/besteffort/pod" + testPod + "/" + testContainer, wantErr: "not where the kubelet puts",
		},
		"a prefix above the kubelet's root":           {path: "/evil/kubepods/besteffort/pod" + testPod + "/" + testContainer, wantErr: "not where the kubelet puts"},
		"a QoS class the kubelet has no cgroup for":   {path: "/kubepods/guaranteed/pod" + testPod + "/" + testContainer, wantErr: "not where the kubelet puts"},
		"a systemd pod slice of another QoS":          {path: "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod" + uid + ".slice/cri-containerd-" + testContainer + ".scope", wantErr: "not where the kubelet puts"},
		"drivers mixed":                               {path: "/kubepods.slice/kubepods-besteffort.slice/pod" + testPod + "/" + testContainer, wantErr: "not where the kubelet puts"},
		"a segment below the container":               {path: "/kubepods/besteffort/pod" + testPod + "/" + testContainer + "/init.scope", wantErr: "not where the kubelet puts"},
		"a container segment that is no container ID": {path: "/kubepods/besteffort/pod" + testPod + "/sandbox", wantErr: "not where the kubelet puts"},
		"only a pod segment":                          {path: "/kubepods/besteffort/pod" + testPod, wantErr: "is pod " + testPod + "'s own cgroup, no container's"},
		"a static pod (systemd)":                      {path: "/kubepods.slice/kubepods-pod6c1b3e9a24b5f0d7e8a9c3b2d1f04e57.slice/cri-containerd-" + testContainer + ".scope", wantErr: "static pod (6c1b3e9a24b5f0d7e8a9c3b2d1f04e57)"},
		"'..' inside the path":                        {path: "/kubepods/../kubepods/besteffort/pod" + testPod + "/" + testContainer, wantErr: "not where the kubelet puts"},
		"another namespace, only up to a container":   {path: "/../" + other, want: Workload{}, ok: false},
		"the kubelet's cgroup, no pod":                {path: "/kubepods/besteffort", wantErr: "not where the kubelet puts"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := tc.kubeletRoot
			if root == "" {
				root = DefaultKubeletCgroupRoot
			}
			for _, content := range []string{"0::" + tc.path + "\n", "4:memory:" + tc.path + "\n1:name=systemd:" + tc.path + "\n"} {
				got, ok, err := ParseCgroup([]byte(content), root)
				switch {
				case tc.wantErr != "":
					if err == nil || ok || !strings.Contains(err.Error(), tc.wantErr) {
						t.Errorf("%q: got %+v, %v, %v; want an error containing %q", content, got, ok, err, tc.wantErr)
					}
				case err != nil || ok != tc.ok || got != tc.want:
					t.Errorf("%q: got %+v, %v, %v; want %+v, %v", content, got, ok, err, tc.want, tc.ok)
				}
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
			_, ok, err := ParseCgroup([]byte(tc.content), DefaultKubeletCgroupRoot)
			if err == nil || ok || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got ok=%v, err=%v; want an error containing %q", ok, err, tc.wantErr)
			}
		})
	}
}

var (
	uuidForm      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	containerForm = regexp.MustCompile(`^[0-9a-f]{64}$`)
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
	f.Add([]byte("0::/../../kubepods-besteffort-pod" + strings.ReplaceAll(testPod, "-", "_") + ".slice/crio-" + testContainer + ".scope\n"))
	f.Add([]byte("0::/kubepods/besteffort/pod0123456789abcdef0123456789abcdef/" + testContainer + "\n"))
	f.Fuzz(func(t *testing.T, content []byte) {
		w, ok, err := ParseCgroup(content, DefaultKubeletCgroupRoot)
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
