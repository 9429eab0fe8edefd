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
}

// ErrProcessGone is returned when the caller's process has exited, or its
// PID now belongs to another process.
var ErrProcessGone = errors.New("the calling process is gone, or its PID belongs to another process now")

// Peer returns the kernel's credentials of conn's peer (SO_PEERCRED) and the
// start time of its process.
func (p Procfs) Peer(conn *net.UnixConn) (Caller, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("reading the peer's credentials: %w", credErr)
	}
	start, err := p.StartTime(cred.Pid)
	if err != nil {
		return Caller{}, err
	}
	return Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, StartTime: start}, nil
}

// Workload returns the pod and container of the caller's process; ok is
// false for a process outside any pod.
func (p Procfs) Workload(c Caller) (Workload, bool, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(int(c.PID)), "cgroup"))
	if errors.Is(err, os.ErrNotExist) {
		return Workload{}, false, ErrProcessGone
	}
	if err != nil {
		return Workload{}, false, err
	}
	return ParseCgroup(b)
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
