//go:build linux

package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// process is a daemon of the node, logging to a file of the node's root.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProcess starts a daemon that the kernel kills if this test process
// dies, however it dies (localcluster.StartTied).
func (n *Node) startProcess(name, path string, args ...string) error {
	logPath := filepath.Join(n.root, "logs", name+".log")
	// Appended to: a restarted daemon's log keeps its earlier run's.
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p := &process{name: name, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	exited, err := localcluster.StartTied(p.cmd)
	if err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = <-exited
		logFile.Close()
		close(p.done)
	}()
	n.processes = append(n.processes, p)
	return nil
}

// stop asks the process to stop, and kills it after grace.
func (p *process) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// exited says why the process has ended, or nil while it runs.
func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v; the end of its log:\n%s", p.name, p.err, tail(p.log, 30))
	default:
		return nil
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return localcluster.LastLines(string(b), n)
}

// run runs a command to its end, with its output in the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// errExited joins why any daemon has ended.
func (n *Node) errExited() error {
	var errs []error
	for _, p := range n.processes {
		errs = append(errs, p.exited())
	}
	return errors.Join(errs...)
}
