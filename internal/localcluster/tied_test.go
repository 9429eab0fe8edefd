package localcluster

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tiedParentEnv makes the test binary the parent of TestTiedBinary: it
// starts sleep through tiedBinary in the folder the variable names.
const tiedParentEnv = "MESHCERT_TEST_TIED_PARENT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(tiedParentEnv); dir != "" {
		runTiedParent(dir)
		return
	}
	os.Exit(m.Run())
}

// runTiedParent starts `sleep 60` as envtest starts etcd, in a process group
// of its own and with no SysProcAttr.Pdeathsig, prints its PID and waits to
// be killed.
func runTiedParent(dir string) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		panic(err)
	}
	tied, err := tiedBinary(dir, sleep)
	if err != nil {
		panic(err)
	}
	cmd := exec.Command(tied, "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	newLockedThread().do(func() { err = cmd.Start() })
	if err != nil {
		panic(err)
	}
	fmt.Println(cmd.Process.Pid)
	time.Sleep(time.Minute)
}

func TestTiedBinaryDiesWithItsParent(t *testing.T) {
	parent := exec.Command(os.Args[0])
	parent.Env = append(os.Environ(), tiedParentEnv+"="+t.TempDir())
	parent.Stderr = os.Stderr
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = parent.Process.Kill()
		_ = parent.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	// Through the shell and setpriv to sleep, the same process.
	for deadline := time.Now().Add(5 * time.Second); commandLine(pid) != sleep+" 60"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d runs %q, not sleep", pid, commandLine(pid))
		}
	}
	stat, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	child := processID{PID: pid, StartTime: stat.startTime}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })

	if err := parent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); child.running(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sleep (%d) outlived its killed parent by 5s", pid)
		}
	}
}

func TestTiedBinaryOfAnotherParentExits(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	tied, err := tiedBinary(t.TempDir(), sleep)
	if err != nil {
		t.Fatal(err)
	}
	// Its parent is the shell, not this process, as if this one had ended
	// before setpriv ran; `; true` keeps the shell from exec'ing it.
	out, err := exec.Command("sh", "-c", `"$0" 5; true`, tied).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "its parent has ended") {
		t.Errorf("the script said %q, want that its parent has ended", out)
	}
}
