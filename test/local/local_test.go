// Package local tests `make run`: the local runner's entry point, run as a
// command, and the walk-throughs of the README and docs against it, exactly
// as written.
package local

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/output"
	"github.com/meshcert/meshcert/test/walkthrough"
)

const readyLine = "meshcert is ready"

func TestMakeRunAndTheWalkthroughs(t *testing.T) {
	root, bin := buildRunner(t)
	state := filepath.Join(t.TempDir(), "state")
	r := startRunner(t, root, bin, state)
	output := r.output

	waitForLine(t, output, readyLine, 3*time.Minute)
	t.Logf("local runner output:\n%s", output.String())
	apiServer := regexp.MustCompile(`\((https://[^)]+)\)`).FindStringSubmatch(output.String())
	if apiServer == nil {
		t.Fatal("no API server address in the output")
	}

	kubeconfig := filepath.Join(state, "kubeconfig")
	stateFromRoot, err := filepath.Rel(root, state)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := walkthrough.Steps(root, "local")
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) < 10 {
		t.Fatalf("the walk-throughs have %d commands, want at least 10", len(steps))
	}
	walkthrough.Runner{
		Dir: root, Timeout: 2 * time.Minute,
		// The runner's state is in state, not .local; named relative to the
		// checkout, as .local is, so that a command that mishandles a
		// relative path fails here too.
		Rewrite: func(command string) string { return strings.ReplaceAll(command, ".local/", stateFromRoot+"/") },
	}.Run(t, steps)

	// Each broken example is rejected as its comment says.
	broken, _ := filepath.Glob(filepath.Join(root, "examples", "broken", "*.yaml"))
	for _, f := range broken {
		out, err := exec.Command("kubectl", "--kubeconfig", kubeconfig, "apply", "-f", f).CombinedOutput()
		if err == nil {
			t.Errorf("%s was accepted", filepath.Base(f))
		}
		for _, want := range expectedErrors(t, f) {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s: the rejection lacks %q:\n%s", filepath.Base(f), want, out)
			}
		}
	}

	// What the walk-through should have shown.
	kubectl := func(args ...string) string {
		out, err := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	// After the rotation, the mesh's one backend is the second CA's.
	if got := kubectl("get", "mesh", "demo", "-o", "jsonpath={.spec.mtls.backends[0].conf.issuerRef}"); got != `{"group":"cert-manager.io","kind":"Issuer","name":"local-ca-2"}` {
		t.Errorf("stored issuerRef %s, want the defaults filled in", got)
	}
	certPEM := kubectl("-n", "demo-app", "get", "secret", "web-mtls", "-o", "jsonpath={.data.tls\\.crt}")
	assertWebCertificate(t, certPEM)
	if meshes := kubectl("get", "meshes", "-o", "name"); strings.Contains(meshes, "broken") {
		t.Errorf("a broken mesh was stored: %s", meshes)
	}

	// SIGTERM stops everything it started.
	r.stop(t, syscall.SIGTERM)
	if n := strings.Count(output.String(), readyLine); n != 1 {
		t.Errorf("%q printed %d times, want once", readyLine, n)
	}
	if left := processesUsing(state); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
	u, _ := url.Parse(apiServer[1])
	if conn, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		conn.Close()
		t.Errorf("the API server's port %s is still open", u.Host)
	}
}

// buildRunner builds the local runner, and returns the checkout, where it
// runs, and the binary.
func buildRunner(t *testing.T) (root, bin string) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(t.TempDir(), "meshcert-local")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/meshcert-local").CombinedOutput(); err != nil {
		t.Fatalf("building the local runner: %v\n%s", err, out)
	}
	return root, bin
}

// runner is a local runner the test started.
type runner struct {
	cmd    *exec.Cmd
	output *output.Buffer
	stderr *output.Buffer
	exited <-chan error
}

// startRunner starts the local runner with its state in state. It dies with
// the test, even when the test is killed before its cleanup runs.
func startRunner(t *testing.T, root, bin, state string) *runner {
	t.Helper()
	r := &runner{cmd: exec.Command(bin, "--dir", state), output: &output.Buffer{}, stderr: &output.Buffer{}}
	r.cmd.Dir = root
	r.cmd.Stdout, r.cmd.Stderr = r.output, r.stderr
	// A process the runner left behind holding its output must not make the
	// test wait forever for the runner's exit.
	r.cmd.WaitDelay = 10 * time.Second
	var err error
	if r.exited, err = localcluster.StartTied(r.cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		if t.Failed() {
			logs, _ := os.ReadFile(filepath.Join(state, "meshcert.log"))
			t.Logf("the last lines of meshcert.log:\n%s", localcluster.LastLines(string(logs), 80))
		}
	})
	return r
}

// stop sends sig and wants the runner to exit with status 0 within a minute.
func (r *runner) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.exited:
		if err != nil {
			t.Errorf("exit after %s: %v\n%s", sig, err, r.stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("the runner did not stop within a minute of %s", sig)
	}
}

func waitForLine(t *testing.T, output *output.Buffer, line string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(output.String(), line) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q line after %s; output:\n%s", line, timeout, output.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func assertWebCertificate(t *testing.T, b64 string) {
	t.Helper()
	out, err := exec.Command("bash", "-c", "base64 -d <<<"+b64).Output()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(out)
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var uris []string
	for _, u := range cert.URIs {
		uris = append(uris, u.String())
	}
	if got, want := strings.Join(uris, " "), "spiffe://demo/web kuma://kuma.io/service/web kuma://version/v1"; got != want {
		t.Errorf("URI SANs %q, want %q", got, want)
	}
}

// processesUsing lists the processes whose command line mentions dir.
func processesUsing(dir string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if cmdline := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(cmdline, dir) {
			found = append(found, fmt.Sprintf("%s: %s", e.Name(), cmdline))
		}
	}
	return found
}

// expectedErrors reads the errors an example's comment promises: the
// indented comment lines after "Expect:", without a trailing "...".
func expectedErrors(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "#   "); ok {
			want = append(want, strings.TrimSuffix(strings.TrimSpace(rest), "..."))
		}
	}
	if len(want) == 0 {
		t.Fatalf("%s promises no error in its comment", file)
	}
	return want
}
