package attest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// statLine is a /proc/<pid>/stat line with the command comm and the start
// time start; the other fields are as a kernel writes them.
func statLine(comm, start string) string {
	return "4242 (" + comm + ") S 1 4242 4242 0 -1 4194560 1021 0 0 0 3 1 0 0 20 0 1 0 " + start + " 12345678 987 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
}

func TestParseStartTime(t *testing.T) {
	tests := map[string]struct {
		stat    string
		want    uint64
		wantErr string
	}{
		"a plain command":               {stat: statLine("envoy", "8812345"), want: 8812345},
		"spaces and parens in the name": {stat: statLine("my (odd) ) name", "77"), want: 77},
		"no command":                    {stat: "4242 S 1 2 3\n", wantErr: "no (command) field"},
		"too few fields":                {stat: "4242 (envoy) S 1 2 3\n", wantErr: "fields after the command"},
		"not a number":                  {stat: statLine("envoy", "soon"), wantErr: `starttime "soon"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseStartTime([]byte(tc.stat))
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			case tc.wantErr == "" && (err != nil || got != tc.want):
				t.Errorf("got %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte(statLine("envoy", "8812345")))
	f.Add([]byte(statLine("a) b (c", "1")))
	f.Fuzz(func(t *testing.T, stat []byte) {
		_, _ = ParseStartTime(stat) // Never a panic.
	})
}

// A proc folder built for a PID, as the end-to-end tests build one.
func TestProcfsOfAFolder(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "4242")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cgroup, err := os.ReadFile("testdata/cgroup/v2-systemd-containerd.txt")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cgroup", string(cgroup))
	write("stat", statLine("envoy", "100"))
	p := Procfs{Root: root}
	caller := Caller{PID: 4242, StartTime: 100}

	w, ok, err := p.Workload(caller)
	if err != nil || !ok || w.PodUID != testPod {
		t.Fatalf("Workload = %+v, %v, %v", w, ok, err)
	}
	if err := p.StillSame(caller); err != nil {
		t.Errorf("StillSame = %v", err)
	}
	write("stat", statLine("sh", "200")) // The PID now belongs to another process.
	if err := p.StillSame(caller); !errors.Is(err, ErrProcessGone) {
		t.Errorf("a reused PID: StillSame = %v, want ErrProcessGone", err)
	}
	if _, _, err := p.Workload(Caller{PID: 9999}); !errors.Is(err, ErrProcessGone) {
		t.Errorf("an exited process: Workload err = %v, want ErrProcessGone", err)
	}
	if err := p.StillSame(Caller{PID: 9999}); !errors.Is(err, ErrProcessGone) {
		t.Errorf("an exited process: StillSame = %v, want ErrProcessGone", err)
	}
}

// The kernel's word over a real Unix socket: the peer is this process.
func TestPeerOverARealSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	p := Procfs{Root: "/proc"}
	caller, err := p.Peer(conn)
	if err != nil {
		t.Fatal(err)
	}
	if int(caller.PID) != os.Getpid() || int(caller.UID) != os.Getuid() || int(caller.GID) != os.Getgid() {
		t.Errorf("peer %+v, want pid %d uid %d gid %d", caller, os.Getpid(), os.Getuid(), os.Getgid())
	}
	own, err := p.StartTime(int32(os.Getpid()))
	if err != nil || caller.StartTime != own || own == 0 {
		t.Errorf("peer start time %d, own %d (%v)", caller.StartTime, own, err)
	}
	if err := p.StillSame(caller); err != nil {
		t.Errorf("StillSame = %v", err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(os.Getpid()) + "/cgroup"); err == nil {
		if _, _, err := p.Workload(caller); err != nil {
			t.Errorf("this process's own cgroup file: %v", err)
		}
	}
}
