// Package local tests `make run`: the local runner's entry point, run as a
// command, and the walk-throughs of the README and docs against it, exactly
// as written.
package local

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshcert/meshcert/internal/localcluster"
)

const readyLine = "meshcert is ready"

// walkthroughFiles are the files whose walk-throughs run against one `make
// run`, relative to the checkout, in this order: each walk-through continues
// from the state the ones before it left.
var walkthroughFiles = []string{
	"README.md",
	"docs/rotation.md",
	"docs/meshidentity.md",
	"docs/agent.md",
}

const (
	walkthroughStart = "<!-- walkthrough -->"
	walkthroughEnd   = "<!-- /walkthrough -->"
)

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
	for _, c := range walkthrough(t, root) {
		// The runner's state is in state, not .local; named relative to the
		// checkout, as .local is, so that a command that mishandles a
		// relative path fails here too.
		command := strings.ReplaceAll(c.command, ".local/", stateFromRoot+"/")
		rejected := c.expect == "rejected"
		out, err := runUntil(root, command, 2*time.Minute, func(out string, err error) bool {
			if rejected || c.expect == "" {
				return (err == nil) != rejected
			}
			return err == nil && strings.TrimSpace(out) == c.expect
		})
		switch {
		case rejected && err == nil:
			t.Errorf("%s: succeeded, want a rejection\n%s", c.command, out)
		case rejected && !strings.Contains(out, "is invalid"):
			t.Errorf("%s: failed without a validation error:\n%s", c.command, out)
		case !rejected && err != nil:
			t.Errorf("%s: %v\n%s", c.command, err, out)
		case !rejected && c.expect != "" && strings.TrimSpace(out) != c.expect:
			t.Errorf("%s: printed %q, want %q", c.command, strings.TrimSpace(out), c.expect)
		}
		t.Logf("$ %s\n%s", c.command, out)
	}

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
	output *lockedBuffer
	stderr *lockedBuffer
	exited <-chan error
}

// startRunner starts the local runner with its state in state. It dies with
// the test, even when the test is killed before its cleanup runs.
func startRunner(t *testing.T, root, bin, state string) *runner {
	t.Helper()
	r := &runner{cmd: exec.Command(bin, "--dir", state), output: &lockedBuffer{}, stderr: &lockedBuffer{}}
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
			lines := strings.Split(strings.TrimSpace(string(logs)), "\n")
			t.Logf("the last lines of meshcert.log:\n%s", strings.Join(lines[max(0, len(lines)-80):], "\n"))
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

// step is one command of a walk-through, and what it must print: "" for
// success, "rejected" for a rejection, else its exact output.
type step struct {
	command, expect string
}

// TestEveryWalkthroughIsRun: a file under docs/ with a walk-through that
// walkthroughFiles does not list would never be run, and a listed file
// without one is a stale entry.
func TestEveryWalkthroughIsRun(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(docs, filepath.Join(root, "README.md")) {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		has := hasWalkthrough(t, f)
		listed := slices.Contains(walkthroughFiles, rel)
		switch {
		case has && !listed:
			t.Errorf("%s has a walk-through that is not run: add it to walkthroughFiles, where its steps belong in the sequence", rel)
		case listed && !has:
			t.Errorf("%s is in walkthroughFiles but has no walk-through", rel)
		}
	}
	walkthrough(t, root)
}

func hasWalkthrough(t *testing.T, file string) bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == walkthroughStart {
			return true
		}
	}
	return false
}

// walkthrough returns the commands of the walk-throughs of walkthroughFiles
// under root, each between <!-- walkthrough --> and <!-- /walkthrough -->, in
// order.
func walkthrough(t *testing.T, root string) []step {
	t.Helper()
	var steps []step
	for _, name := range walkthroughFiles {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		inSection, inCode := false, false
		for _, line := range strings.Split(string(b), "\n") {
			trimmed := strings.TrimSpace(line)
			switch {
			case trimmed == walkthroughStart:
				inSection = true
			case trimmed == walkthroughEnd:
				inSection = false
			case !inSection:
			case strings.HasPrefix(trimmed, "```sh"):
				inCode = true
			case strings.HasPrefix(trimmed, "```"):
				inCode = false
			case inCode && trimmed != "" && !strings.HasPrefix(trimmed, "#"):
				command, expect, _ := strings.Cut(trimmed, "# expect: ")
				steps = append(steps, step{command: strings.TrimSpace(command), expect: strings.TrimSpace(expect)})
			}
		}
		if inSection {
			t.Fatalf("%s: a walk-through has no %s", name, walkthroughEnd)
		}
	}
	if len(steps) < 10 {
		t.Fatalf("the walk-throughs have %d commands, want at least 10", len(steps))
	}
	return steps
}

// runUntil runs a shell command until done says its outcome is final, or
// the timeout passes: issuance takes a moment, as it would for a person.
func runUntil(dir, command string, timeout time.Duration, done func(string, error) bool) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		c := exec.Command("bash", "-o", "pipefail", "-c", command)
		c.Dir = dir
		out, err := c.CombinedOutput()
		if done(string(out), err) || time.Now().After(deadline) {
			return string(out), err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func waitForLine(t *testing.T, output *lockedBuffer, line string, timeout time.Duration) {
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

// lockedBuffer is written by the output reader while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
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
