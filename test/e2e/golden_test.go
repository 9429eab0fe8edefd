package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// kubectlRun is one kubectl invocation as the golden files record it.
type kubectlRun struct {
	args     []string
	exitCode int
	stdout   string
	stderr   string
}

func runKubectl(t *testing.T, args ...string) kubectlRun {
	t.Helper()
	stdout, stderr, err := kubectlIn(context.Background(), nil, args...)
	run := kubectlRun{args: args, stdout: stdout, stderr: stderr}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		run.exitCode = exit.ExitCode()
	case err != nil:
		t.Fatalf("running kubectl %v: %v", args, err)
	}
	return run
}

func (r kubectlRun) String() string {
	return fmt.Sprintf("$ kubectl %s\n# exit code: %d\n# stdout:\n%s# stderr:\n%s",
		strings.Join(r.args, " "), r.exitCode, r.stdout, r.stderr)
}

// assertGolden compares kubectl's output with testdata/golden/NAME.txt, or
// rewrites the file with -update.
func assertGolden(t *testing.T, name string, runs ...kubectlRun) {
	t.Helper()
	var got strings.Builder
	for i, r := range runs {
		if i > 0 {
			got.WriteString("\n")
		}
		got.WriteString(r.String())
	}
	path := filepath.Join("..", "testdata", "golden", name+".txt")
	if *update {
		if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the golden file (run with -update to create it): %v", err)
	}
	if got.String() != string(want) {
		t.Errorf("kubectl output differs from %s (run with -update to accept it)\n--- got:\n%s\n--- want:\n%s", path, got.String(), want)
	}
}
