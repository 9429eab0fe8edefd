package attest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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

// statusFile is a /proc/<pid>/status file, in part, of a process whose
// real, effective, saved and filesystem IDs are uids and gids.
func statusFile(uids, gids string) string {
	return "Name:\tenvoy\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\nPPid:\t1\n" +
		"Uid:\t" + uids + "\nGid:\t" + gids + "\nFDSize:\t64\nGroups:\t10 20\n"
}

func TestParseStatusIDs(t *testing.T) {
	tests := map[string]struct {
		status   string
		uid, gid uint32
		wantErr  string
	}{
		"one user":                        {status: statusFile("1000\t1000\t1000\t1000", "2000\t2000\t2000\t2000"), uid: 1000, gid: 2000},
		"setuid: the effective IDs count": {status: statusFile("1000\t0\t0\t0", "2000\t5\t5\t5"), uid: 0, gid: 5},
		"no Gid line":                     {status: "Uid:\t1\t1\t1\t1\n", wantErr: "no Uid: and Gid: lines"},
		"three IDs":                       {status: statusFile("1\t1\t1", "1\t1\t1\t1"), wantErr: "is not four IDs"},
		"not a number":                    {status: statusFile("1\tx\t1\t1", "1\t1\t1\t1"), wantErr: "status: Uid:"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			uid, gid, err := ParseStatusIDs([]byte(tc.status))
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			case tc.wantErr == "" && (err != nil || uid != tc.uid || gid != tc.gid):
				t.Errorf("got %d, %d, %v; want %d, %d", uid, gid, err, tc.uid, tc.gid)
			}
		})
	}
}

// A process at the caller's PID under other IDs than the connection's is
// not the caller: its cgroup is never read as the caller's.
func TestWorkloadRefusesAnotherUsersProcess(t *testing.T) {
	tests := map[string]struct {
		uids, gids string
		wantErr    string
	}{
		"the caller's own IDs":                         {uids: "1000\t1000\t1000\t1000", gids: "3000\t3000\t3000\t3000"},
		"a setuid program the caller runs":             {uids: "0\t1000\t1000\t1000", gids: "0\t3000\t3000\t3000"},
		"another user (the PID reused)":                {uids: "0\t0\t0\t0", gids: "3000\t3000\t3000\t3000", wantErr: "process 4242 runs as uid 0 gid 3000, but connected as uid 1000 gid 3000"},
		"another group":                                {uids: "1000\t1000\t1000\t1000", gids: "0\t0\t0\t0", wantErr: "runs as uid 1000 gid 0"},
		"the real IDs the caller's, not the effective": {uids: "1000\t0\t0\t0", gids: "3000\t3000\t3000\t3000", wantErr: "runs as uid 0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root, _ := procFolder(t, map[string]string{"status": statusFile(tc.uids, tc.gids)})
			w, ok, err := Procfs{Root: root}.Workload(Caller{PID: 4242, UID: 1000, GID: 3000})
			switch {
			case tc.wantErr != "":
				if err == nil || ok || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %+v, %v, %v; want an error containing %q", w, ok, err, tc.wantErr)
				}
			case err != nil || !ok || w.PodUID != testPod:
				t.Errorf("got %+v, %v, %v; want pod %s", w, ok, err, testPod)
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
	root, write := procFolder(t, map[string]string{
		"stat":   statLine("envoy", "100"),
		"status": statusFile("1000\t1000\t1000\t1000", "1000\t1000\t1000\t1000"),
	})
	p := Procfs{Root: root}
	caller := Caller{PID: 4242, UID: 1000, GID: 1000, StartTime: 100}

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
	if _, _, err := p.Workload(Caller{PID: 9999, UID: 1000, GID: 1000}); !errors.Is(err, ErrProcessGone) {
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

// connectHelperEnv names the socket the helper process connects to.
const connectHelperEnv = "ATTEST_CONNECT_TO"

// TestMain lets this test binary be the connecting process of
// TestPeerGoneBeforeTheHandshake: with connectHelperEnv set, it connects to
// that socket and exits, running no test.
func TestMain(m *testing.M) {
	if path := os.Getenv(connectHelperEnv); path != "" {
		if _, err := net.Dial("unix", path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A process that connects and is gone before the handshake, its PID taken
// by another (here: a proc folder that shows one at that PID), gets no start
// time of that other: the kernel's pidfd of the peer says it is gone.
func TestPeerGoneBeforeTheHandshake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	helper := exec.Command(os.Args[0])
	helper.Env = append(os.Environ(), connectHelperEnv+"="+path)
	if out, err := helper.CombinedOutput(); err != nil { // Exited and reaped.
		t.Fatalf("the connecting process: %v: %s", err, out)
	}
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(helper.Process.Pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(statLine("intruder", "100")), 0o644); err != nil {
		t.Fatal(err)
	}
	var uname unix.Utsname
	_ = unix.Uname(&uname)
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var pidfdErr error
	_ = raw.Control(func(fd uintptr) {
		var pidfd int
		if pidfd, pidfdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); pidfdErr == nil {
			unix.Close(pidfd)
		}
	})
	if errors.Is(pidfdErr, unix.ENOPROTOOPT) {
		t.Skipf("kernel %s has no SO_PEERPIDFD (Linux 6.5+): the start time is that of whichever process has the PID at the handshake", unix.ByteSliceToString(uname.Release[:]))
	}
	caller, err := Procfs{Root: root}.Peer(conn)
	if !errors.Is(err, ErrProcessGone) {
		t.Errorf("kernel %s: Peer = %+v, %v; want ErrProcessGone", unix.ByteSliceToString(uname.Release[:]), caller, err)
	}
}

// procFolder lays out a proc folder with PID 4242 in a pod's container
// cgroup and the other files given, and returns its root and a writer of
// further files.
func procFolder(t *testing.T, files map[string]string) (root string, write func(name, content string)) {
	t.Helper()
	root = t.TempDir()
	dir := filepath.Join(root, "4242")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write = func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cgroup, err := os.ReadFile("testdata/cgroup/v2-systemd-containerd.txt")
	if err != nil {
		t.Fatal(err)
	}
	write("cgroup", string(cgroup))
	for name, content := range files {
		write(name, content)
	}
	return root, write
}
