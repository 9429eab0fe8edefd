package local

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunnerLeavesNoProcess: a runner killed by SIGKILL takes along every
// process it started, and the next run in its folder comes up clean; a
// second run in a folder in use is refused; a hang-up stops a runner in
// order.
func TestRunnerLeavesNoProcess(t *testing.T) {
	root, bin := buildRunner(t)
	state := filepath.Join(t.TempDir(), "state")

	killed := startRunner(t, root, bin, state)
	waitForLine(t, killed.output, readyLine, 3*time.Minute)
	started := descendants(killed.cmd.Process.Pid)
	assertRecorded(t, state, started)
	if err := killed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-killed.exited
	assertEnded(t, started, 5*time.Second)

	again := startRunner(t, root, bin, state)
	waitForLine(t, again.output, readyLine, 3*time.Minute)
	// Nothing was left for it to end.
	if strings.Contains(again.output.String(), "Ending a process") {
		t.Errorf("the run after a killed one ended its processes:\n%s", again.output.String())
	}

	refused := startRunner(t, root, bin, state)
	select {
	case err := <-refused.exited:
		abs, _ := filepath.Abs(state)
		holder := "process " + strconv.Itoa(again.cmd.Process.Pid) + " (" + bin + " --dir " + state + ")"
		if err == nil || !strings.Contains(refused.stderr.String(), abs) || !strings.Contains(refused.stderr.String(), holder) {
			t.Errorf("a second run in %s exited with %v, want an error naming the folder and %s; it said:\n%s", state, err, holder, refused.stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("a second run in a folder in use still runs after a minute")
	}

	started = descendants(again.cmd.Process.Pid)
	again.stop(t, syscall.SIGHUP)
	if !strings.Contains(again.output.String(), "stopping kube-apiserver and etcd") {
		t.Errorf("no orderly stop after SIGHUP:\n%s", again.output.String())
	}
	assertEnded(t, started, 5*time.Second)
	if left := processesUsing(state); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
}

// process is a PID and its start time, as /proc/<pid>/stat gives them: a
// PID reused by a new process is another process.
type process struct {
	pid       int
	startTime string
	command   string
}

// stat reads the parent and the start time of pid; ok is false when it has
// ended, as a zombie has.
func stat(pid int) (parent int, startTime string, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, "", false
	}
	// After the command name in parentheses: the state, the parent, ...,
	// and the start time, the 22nd field.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	parent, _ = strconv.Atoi(fields[1])
	return parent, fields[19], fields[0] != "Z"
}

// descendants lists the processes that pid started, and theirs.
func descendants(pid int) []process {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if parent, _, ok := stat(child); ok {
			children[parent] = append(children[parent], child)
		}
	}
	var found []process
	for queue := children[pid]; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		if _, start, ok := stat(p); ok {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "cmdline"))
			found = append(found, process{pid: p, startTime: start, command: strings.ReplaceAll(string(cmdline), "\x00", " ")})
		}
		queue = append(queue, children[p]...)
	}
	return found
}

// assertRecorded wants the runner's state file to list its etcd and
// kube-apiserver, which started processes holds.
func assertRecorded(t *testing.T, state string, started []process) {
	t.Helper()
	var controlPlane []int
	for _, p := range started {
		if args := strings.Fields(p.command); len(args) > 0 && (filepath.Base(args[0]) == "etcd" || filepath.Base(args[0]) == "kube-apiserver") {
			controlPlane = append(controlPlane, p.pid)
		}
	}
	b, err := os.ReadFile(filepath.Join(state, "processes.json"))
	if err != nil {
		t.Fatal(err)
	}
	var recorded []struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(b, &recorded); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, r := range recorded {
		pids = append(pids, r.PID)
	}
	slices.Sort(pids)
	slices.Sort(controlPlane)
	if len(controlPlane) != 2 || !slices.Equal(pids, controlPlane) {
		t.Errorf("recorded processes %v, want etcd and kube-apiserver %v, of the runner's %v", pids, controlPlane, started)
	}
}

// assertEnded wants every one of started to end within timeout.
func assertEnded(t *testing.T, started []process, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, p := range started {
		for {
			_, start, ok := stat(p.pid)
			if !ok || start != p.startTime {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("process %d (%s) still runs %s after the runner", p.pid, p.command, timeout)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
