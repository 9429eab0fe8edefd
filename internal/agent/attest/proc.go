package attest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Caller is the process at the other end of a Unix socket, as the kernel
// reported it when it connected.
type Caller struct {
	PID int32
	UID uint32
	GID uint32
	// StartTime is the process's start, in clock ticks since boot: a PID
	// reused by a later process has another.
	StartTime uint64
}

// Procfs reads processes from a proc filesystem: /proc, or in tests a folder
// laid out like it.
type Procfs struct {
	Root string
	// KubeletCgroupRoot is the kubelet's --cgroup-root, under which it puts
	// pods; empty is DefaultKubeletCgroupRoot.
	KubeletCgroupRoot string
}

// ErrProcessGone is returned when the caller's process has exited, or its
// PID now belongs to another process.
var ErrProcessGone = errors.New("the calling process is gone, or its PID belongs to another process now")

// Peer returns the kernel's credentials of conn's peer (SO_PEERCRED) and the
// start time of its process.
//
// Where the kernel has SO_PEERPIDFD (Linux 6.5+), the start time is bound to
// the process that connected: the pidfd refers to that process, not to its
// PID, and while it lives its PID is no other's, so a start time read while
// it still lives is its own. A peer that is gone by then (its PID perhaps
// another's already) is ErrProcessGone. Older kernels give only the PID, and
// the start time is that of whichever process has it at the handshake.
func (p Procfs) Peer(conn *net.UnixConn) (Caller, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var credErr, pidfdErr error
	pidfd := -1
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		pidfd, pidfdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	}); err != nil {
		return Caller{}, err
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("reading the peer's credentials: %w", credErr)
	}
	switch {
	case pidfdErr == nil:
		defer unix.Close(pidfd)
	case errors.Is(pidfdErr, unix.ENOPROTOOPT):
		pidfd = -1 // A kernel before 6.5.
	default:
		// The kernel has SO_PEERPIDFD but no process for the peer: it has
		// exited and been reaped.
		return Caller{}, ErrProcessGone
	}
	start, err := p.StartTime(cred.Pid)
	if err != nil {
		return Caller{}, err
	}
	if pidfd >= 0 && !alive(pidfd) {
		return Caller{}, ErrProcessGone
	}
	return Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, StartTime: start}, nil
}

// alive tells whether the process of a pidfd still exists, by sending it
// signal 0, which delivers nothing. EPERM (the agent may not signal it)
// still says it exists; ESRCH says it is gone.
func alive(pidfd int) bool {
	err := unix.PidfdSendSignal(pidfd, 0, nil, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Workload returns the pod and container of the caller's process; ok is
// false for a process outside any pod. The process at the caller's PID must
// run as the caller's user and group, or it is not the caller's: its cgroup
// would say nothing about the caller.
func (p Procfs) Workload(c Caller) (Workload, bool, error) {
	if err := p.SameCredentials(c); err != nil {
		return Workload{}, false, err
	}
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(int(c.PID)), "cgroup"))
	if errors.Is(err, os.ErrNotExist) {
		return Workload{}, false, ErrProcessGone
	}
	if err != nil {
		return Workload{}, false, err
	}
	root := p.KubeletCgroupRoot
	if root == "" {
		root = DefaultKubeletCgroupRoot
	}
	return ParseCgroup(b, root)
}

// SameCredentials checks that the process at the caller's PID runs as the
// user and group the kernel gave for the connection. SO_PEERCRED holds the
// effective IDs of the process when it connected, so the effective IDs of
// its status file are compared: a process now at that PID under other IDs is
// another process (or one that changed its IDs since), and is refused.
func (p Procfs) SameCredentials(c Caller) error {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(int(c.PID)), "status"))
	if errors.Is(err, os.ErrNotExist) {
		return ErrProcessGone
	}
	if err != nil {
		return err
	}
	uid, gid, err := ParseStatusIDs(b)
	if err != nil {
		return err
	}
	if uid != c.UID || gid != c.GID {
		return fmt.Errorf("process %d runs as uid %d gid %d, but connected as uid %d gid %d", c.PID, uid, gid, c.UID, c.GID)
	}
	return nil
}

// ParseStatusIDs reads the effective user and group IDs of a
// /proc/<pid>/status file: the second of the four IDs (real, effective,
// saved, filesystem) of its Uid: and Gid: lines.
func ParseStatusIDs(status []byte) (uid, gid uint32, err error) {
	var seen int
	for _, line := range strings.Split(string(status), "\n") {
		key, ids, ok := strings.Cut(line, ":")
		if !ok || (key != "Uid" && key != "Gid") {
			continue
		}
		fields := strings.Fields(ids)
		if len(fields) != 4 {
			return 0, 0, fmt.Errorf("status: %s: %q is not four IDs", key, ids)
		}
		v, err := strconv.ParseUint(fields[1], 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("status: %s: %w", key, err)
		}
		if key == "Uid" {
			uid, seen = uint32(v), seen|1
		} else {
			gid, seen = uint32(v), seen|2
		}
	}
	if seen != 3 {
		return 0, 0, errors.New("status: no Uid: and Gid: lines")
	}
	return uid, gid, nil
}

// StillSame checks, after attestation, that the caller's PID still belongs
// to the process that connected, as SPIRE does: otherwise the process was
// replaced while it was being attested, and what was read may be another's.
func (p Procfs) StillSame(c Caller) error {
	start, err := p.StartTime(c.PID)
	if err != nil {
		return err
	}
	if start != c.StartTime {
		return ErrProcessGone
	}
	return nil
}

// StartTime reads the start time of a process from its stat file.
func (p Procfs) StartTime(pid int32) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(int(pid)), "stat"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrProcessGone
	}
	if err != nil {
		return 0, err
	}
	return ParseStartTime(b)
}

// ParseStartTime reads field 22, starttime, of a /proc/<pid>/stat line. The
// command name, field 2, is in parentheses and may hold spaces and
// parentheses itself, so the fields are counted from the last ')'.
func ParseStartTime(stat []byte) (uint64, error) {
	s := string(stat)
	end := strings.LastIndexByte(s, ')')
	if end < 0 || !strings.Contains(s[:end], "(") {
		return 0, errors.New("stat: no (command) field")
	}
	// After ')' come field 3 (state) onwards; starttime is field 22.
	fields := strings.Fields(s[end+1:])
	const startTimeIndex = 22 - 3
	if len(fields) <= startTimeIndex {
		return 0, fmt.Errorf("stat: %d fields after the command, want at least %d", len(fields), startTimeIndex+1)
	}
	v, err := strconv.ParseUint(fields[startTimeIndex], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: starttime %q: %w", fields[startTimeIndex], err)
	}
	return v, nil
}
