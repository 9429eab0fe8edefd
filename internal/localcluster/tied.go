package localcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// SignalContext is done on the first SIGINT, SIGTERM or SIGHUP: a closed
// terminal stops the local runner as Ctrl-C does, in order. A second signal
// then ends the process at once, and its children with it.
func SignalContext() context.Context {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx
}

// lockedThread runs functions on one OS thread of its own. The kernel sends
// a child its parent-death signal when the thread that forked it ends, not
// the process (see syscall.SysProcAttr.Pdeathsig), and the Go runtime may
// end a thread whenever a goroutine locked to it returns. Children started
// here are signalled only when close is called, or when this process ends.
type lockedThread struct {
	calls chan func()
}

func newLockedThread() *lockedThread {
	t := &lockedThread{calls: make(chan func())}
	go func() {
		// Never unlocked: the thread ends with this goroutine, taking along
		// whatever it started that still runs.
		runtime.LockOSThread()
		for fn := range t.calls {
			fn()
		}
	}()
	return t
}

// do runs fn on the thread and waits for it.
func (t *lockedThread) do(fn func()) {
	done := make(chan struct{})
	t.calls <- func() {
		defer close(done)
		fn()
	}
	<-done
}

// close ends the thread once the children started on it are gone.
func (t *lockedThread) close() { close(t.calls) }

// StartTied starts cmd so that the kernel SIGKILLs it when this process
// ends, even by SIGKILL; the channel then receives cmd.Wait's result.
func StartTied(cmd *exec.Cmd) (<-chan error, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	t := newLockedThread()
	var err error
	t.do(func() { err = cmd.Start() })
	if err != nil {
		t.close()
		return nil, err
	}
	exited := make(chan error, 1)
	go func() {
		exited <- cmd.Wait()
		t.close()
	}()
	return exited, nil
}

// tiedBinary writes, in dir, a script named as the binary at path that runs
// it with SIGKILL as its parent-death signal, set by setpriv, since envtest
// starts kube-apiserver and etcd with a SysProcAttr of its own. The script
// is for children of this process only: one whose parent ended before
// setpriv ran would never get the signal, so it exits instead.
func tiedBinary(dir, path string) (string, error) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return "", fmt.Errorf("setpriv (util-linux) ties kube-apiserver and etcd to this process: %w", err)
	}
	script := fmt.Sprintf(`#!/bin/sh
exec %s --pdeathsig KILL -- /bin/sh -c '[ "$PPID" = "$1" ] || { echo "$2: its parent has ended" >&2; exit 1; }; shift; exec "$@"' tied %d %s "$@"
`, shellQuote(setpriv), os.Getpid(), shellQuote(path))
	tied := filepath.Join(dir, filepath.Base(path))
	return tied, os.WriteFile(tied, []byte(script), 0o755)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
