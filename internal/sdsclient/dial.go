// Package sdsclient is a workload of the node agent, for the tests and the
// bench: it connects to the agent's socket as a Unix user of its own, so
// that the kernel's peer credentials name that user, and keeps an SDS
// stream open as Envoy does, checking every certificate it is pushed.
package sdsclient

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialAs connects to the Unix socket at path as the user uid. The connect
// is made on a thread of its own whose effective user is uid, which is
// what the kernel records as the peer's credentials; the process's other
// threads keep theirs. Another user than the process's own needs root.
func DialAs(ctx context.Context, path string, uid uint32) (net.Conn, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Locked, a thread's changed credentials stay on it; and should
		// they not be restored, the runtime ends the thread with this
		// goroutine instead of reusing it.
		runtime.LockOSThread()
		fd, restored, err := connectAs(path, uid)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- result{fd, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() {
			if r := <-done; r.err == nil {
				unix.Close(r.fd)
			}
		}()
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	f := os.NewFile(uintptr(r.fd), path)
	defer f.Close()
	return net.FileConn(f)
}

// connectAs runs on a locked thread: it sets the thread's effective user
// to uid for the connect, and back. restored is false if the thread could
// not get its own user back.
func connectAs(path string, uid uint32) (fd int, restored bool, err error) {
	fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, true, err
	}
	own := uint32(unix.Geteuid())
	if uid != own {
		// The raw system call changes this thread only; unix.Setresuid
		// would change every thread of the process.
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); errno != 0 {
			unix.Close(fd)
			return -1, true, fmt.Errorf("becoming user %d to connect: %w", uid, errno)
		}
	}
	connectErr := unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	if uid != own {
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(own), ^uintptr(0)); errno != 0 {
			unix.Close(fd)
			return -1, false, fmt.Errorf("returning to user %d after connecting: %w", own, errno)
		}
	}
	if connectErr != nil {
		unix.Close(fd)
		return -1, true, fmt.Errorf("connecting to %s as user %d: %w", path, uid, connectErr)
	}
	return fd, true, nil
}
