package localcluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

const (
	// lockFileName is flocked for a cluster's life. It is never removed: a
	// process could otherwise lock the removed file while another locks a
	// new one of the same name.
	lockFileName = "lock"
	// processesFileName records the cluster's processes, for a later run to
	// find them should this one be killed before it stops them.
	processesFileName = "processes.json"
	// leftoverGrace is how long a process an earlier run left behind has to
	// stop after SIGTERM before it is killed.
	leftoverGrace = 10 * time.Second
)

// processID names a process across PID reuse: a PID and the process's start
// time, in clock ticks after boot, from /proc/<pid>/stat.
type processID struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Command   string `json:"command"`
}

// dirGuard holds a cluster's folder for one cluster at a time.
type dirGuard struct {
	lock      *os.File
	processes string
}

// inUseError says that a live process holds a cluster's folder.
type inUseError struct {
	Dir string
	// PID and Command name the holder; PID is 0 when it is not known yet.
	PID     int
	Command string
}

func (e *inUseError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("%s is in use by another process; stop it first", e.Dir)
	}
	return fmt.Sprintf("%s is in use by process %d (%s); stop it first", e.Dir, e.PID, e.Command)
}

// guardDir locks dir for this process, or returns an *inUseError naming the
// process that holds it. The processes an earlier holder recorded and left
// running, killed before it could stop them, are then ended: SIGTERM, and
// SIGKILL after grace. Two etcds must never share one data folder.
func guardDir(dir string, log logr.Logger, grace time.Duration) (*dirGuard, error) {
	lock, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(lock.Name())
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, inUseBy(dir, holder)
		}
		return nil, fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	g := &dirGuard{lock: lock, processes: filepath.Join(dir, processesFileName)}
	// The lock's holder, for the error of the next process that tries it.
	if err := lock.Truncate(0); err != nil {
		return nil, errors.Join(err, g.release())
	}
	if _, err := lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return nil, errors.Join(err, g.release())
	}
	if err := g.endLeftovers(log, grace); err != nil {
		return nil, errors.Join(err, g.release())
	}
	return g, nil
}

func inUseBy(dir string, holder []byte) *inUseError {
	e := &inUseError{Dir: dir}
	pid, err := strconv.Atoi(strings.TrimSpace(string(holder)))
	if err != nil {
		// The holder has locked the file but not yet written its PID.
		return e
	}
	e.PID, e.Command = pid, commandLine(pid)
	return e
}

// endLeftovers ends the recorded processes that still run, and forgets them.
func (g *dirGuard) endLeftovers(log logr.Logger, grace time.Duration) error {
	b, err := os.ReadFile(g.processes)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var recorded []processID
	if err := json.Unmarshal(b, &recorded); err != nil {
		return fmt.Errorf("reading %s: %w", g.processes, err)
	}
	var errs []error
	for _, p := range recorded {
		if !p.running() {
			continue
		}
		log.Info("Ending a process that an earlier run left running", "pid", p.PID, "command", p.Command)
		errs = append(errs, p.end(grace))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.Remove(g.processes)
}

// record replaces the recorded processes with those of pids.
func (g *dirGuard) record(pids []int) error {
	var ids []processID
	for _, pid := range pids {
		stat, err := readStat(pid)
		if err != nil {
			return err
		}
		ids = append(ids, processID{PID: pid, StartTime: stat.startTime, Command: commandLine(pid)})
	}
	b, err := json.MarshalIndent(ids, "", "  ")
	if err != nil {
		return err
	}
	// Renamed into place: a run killed while writing leaves the old record.
	tmp := g.processes + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, g.processes)
}

// release ends the recorded processes that still run, as a failed stop
// may leave them, and unlocks the folder.
func (g *dirGuard) release() error {
	err := g.endLeftovers(logr.Discard(), 0)
	return errors.Join(err, g.lock.Close())
}

// running tells whether p is still the process recorded: a PID taken over
// by another process has another start time.
func (p processID) running() bool {
	stat, err := readStat(p.PID)
	return err == nil && stat.startTime == p.StartTime && stat.state != 'Z'
}

// end sends SIGTERM, and SIGKILL if p still runs after grace.
func (p processID) end(grace time.Duration) error {
	for _, step := range []struct {
		signal syscall.Signal
		wait   time.Duration
	}{{syscall.SIGTERM, grace}, {syscall.SIGKILL, 10 * time.Second}} {
		if err := syscall.Kill(p.PID, step.signal); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("ending process %d: %w", p.PID, err)
		}
		for deadline := time.Now().Add(step.wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if !p.running() {
				return nil
			}
		}
	}
	return fmt.Errorf("process %d (%s) outlived SIGKILL", p.PID, p.Command)
}

// procStat is what /proc/<pid>/stat says of a process.
type procStat struct {
	state     byte
	parent    int
	startTime uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	// The command name, in parentheses, may hold spaces and parentheses.
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("process %d: unreadable stat %q", pid, b)
	}
	// From the third field on: state, parent, ...; the start time is the 22nd.
	fields := strings.Fields(string(b[end+1:]))
	if len(fields) < 20 {
		return procStat{}, fmt.Errorf("process %d: unreadable stat %q", pid, b)
	}
	parent, err := strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, fmt.Errorf("process %d: parent: %w", pid, err)
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("process %d: start time: %w", pid, err)
	}
	return procStat{state: fields[0][0], parent: parent, startTime: start}, nil
}

// commandLine is the process's command line, its arguments joined by spaces.
func commandLine(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return "unknown command"
	}
	return strings.Join(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), " ")
}

// childrenNaming lists this process's children whose command line names a
// path under dir.
func childrenNaming(dir string) ([]int, error) {
	pids, err := ProcessesNaming(dir + string(filepath.Separator))
	return slices.DeleteFunc(pids, func(pid int) bool {
		stat, err := readStat(pid)
		return err != nil || stat.parent != os.Getpid()
	}), err
}

// ProcessesNaming lists the processes, other than this one, whose command
// line holds marker.
func ProcessesNaming(marker string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(marker)) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
