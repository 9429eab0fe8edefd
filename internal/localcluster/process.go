package localcluster

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// MeshcertBinary builds cmd/meshcert once per test process, with the flags
// of its image (static, stripped), and returns its path. The binary is kept
// in the cache outside the checkout, one per checkout, so that test
// processes leave nothing behind.
func MeshcertBinary() (string, error) {
	buildOnce.Do(func() { binary, buildErr = buildMeshcert() })
	return binary, buildErr
}

func buildMeshcert() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	dir, err := binaryCache()
	if err != nil {
		return "", err
	}
	checkout := sha256.Sum256([]byte(root))
	dest := filepath.Join(dir, fmt.Sprintf("meshcert-%x", checkout[:8]))
	// Built beside its destination and renamed over it: another test
	// process of the same checkout may be running the previous build.
	tmp, err := os.CreateTemp(dir, ".meshcert-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", tmp.Name(), "./cmd/meshcert")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building meshcert: %w\n%s", err, out)
	}
	return dest, os.Rename(tmp.Name(), dest)
}

// binaryCache is where hack/cluster-bins.sh caches the cluster's binaries.
func binaryCache() (string, error) {
	dir := os.Getenv("MESHCERT_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(base, "meshcert")
	}
	dir = filepath.Join(dir, "bin")
	return dir, os.MkdirAll(dir, 0o755)
}

// Process is a binary running against the cluster as a process of its own,
// so that it can be killed like a crashing pod.
type Process struct {
	cmd    *exec.Cmd
	logs   *os.File
	exited chan struct{}
	err    error
}

// StartProcess runs the meshcert binary against the cluster with args; the
// kubeconfig and a health probe address are added. It waits until ready.
func (c *Cluster) StartProcess(logPath string, args ...string) (*Process, error) {
	return startMeshcert(logPath, nil, c.Kubeconfig, args)
}

// StartAgentProcess runs `meshcert agent` with args, as the user of
// kubeconfig, or as the cluster's admin when it is empty; a health probe
// address is added. It waits until ready.
func (c *Cluster) StartAgentProcess(logPath, kubeconfig string, args ...string) (*Process, error) {
	if kubeconfig == "" {
		kubeconfig = c.Kubeconfig
	}
	return startMeshcert(logPath, []string{"agent"}, kubeconfig, args)
}

func startMeshcert(logPath string, command []string, kubeconfig string, args []string) (*Process, error) {
	bin, err := MeshcertBinary()
	if err != nil {
		return nil, err
	}
	return OnFreePort(func(port int) (*Process, error) {
		probe := fmt.Sprintf("127.0.0.1:%d", port)
		return StartBinary(bin, logPath, "http://"+probe+"/readyz",
			slices.Concat(command, []string{"--kubeconfig", kubeconfig, "--health-probe-bind-address", probe}, args)...)
	})
}

// OnFreePort starts a process on a free loopback port, and again on another
// when that one was taken between being found and being bound: processes
// starting at once, and every outgoing connection, race for ports.
func OnFreePort(start func(port int) (*Process, error)) (*Process, error) {
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		p, err := start(port)
		// StartBinary's error quotes the process's last lines.
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return p, err
		}
	}
}

// StartBinary runs bin with args, its output appended to logPath, and waits
// up to a minute for readyURL to answer 200.
func StartBinary(bin, logPath, readyURL string, args ...string) (*Process, error) {
	name := filepath.Base(bin)
	logs, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &Process{logs: logs, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logs, logs
	// Die with the test, even when it is killed before its cleanup runs.
	waited, err := StartTied(p.cmd)
	if err != nil {
		logs.Close()
		return nil, err
	}
	go func() {
		p.err = <-waited
		logs.Close()
		close(p.exited)
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited before it was ready: %v; its last lines:\n%s", name, p.err, LastLines(Logs(logPath), 20))
		default:
		}
		if resp, err := http.Get(readyURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%s was not ready within a minute; see %s", name, logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends the process at once, as a crash would: no cleanup, no handover.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// Terminate sends SIGTERM, as the kubelet does, and waits for the exit.
func (p *Process) Terminate() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.exited
	return p.err
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited tells whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// LastLines returns the last n lines of s.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Logs reads the process's log file.
func Logs(path string) string {
	b, _ := os.ReadFile(path)
	return string(bytes.ToValidUTF8(b, nil))
}
