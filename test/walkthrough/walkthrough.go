// Package walkthrough reads the walk-throughs of the README and docs and runs
// their commands exactly as written, so that every command a user is shown is
// one a test ran.
//
// A walk-through is the ```sh blocks between <!-- walkthrough: <setup> -->
// and <!-- /walkthrough -->. Each line of such a block is one command; a
// trailing `# expect: <output>` is its exact output, `# expect: rejected` a
// validation error. The setup names where its commands run, and Files which
// files hold it: "local" against `make run`, "node" and "kuma" against the
// real node (without and with Kuma), "cluster" and "migration" against the
// end-to-end test cluster.
package walkthrough

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Files lists, for each setup, the files whose walk-throughs run against it,
// relative to the checkout, in order: each walk-through continues from the
// state the ones before it left.
var Files = map[string][]string{
	"local": {"README.md", "docs/rotation.md", "docs/meshidentity.md", "docs/agent.md"},
	"node":  {"docs/installing.md"},
	// Kuma, its images, meshcert, the mesh: four parts, the test acting
	// between them.
	"kuma": {"docs/kuma.md"},
	// After helm install, with a Mesh and a MeshIdentity meshcert serves.
	"cluster": {"docs/upgrade.md", "docs/uninstall.md"},
	// While two workloads talk through both of meshcert's paths.
	"migration": {"docs/migration.md"},
}

const end = "<!-- /walkthrough -->"

var start = regexp.MustCompile(`^<!-- walkthrough: ([a-z]+) -->$`)

// Step is one command of a walk-through, and what it must print: "" for
// success, "rejected" for a validation error, else its exact output.
type Step struct {
	File, Command, Expect string
	// Part numbers the step's walk-through among its setup's, from 0: a
	// test may do between two parts what the prose between them asks.
	Part int
}

// Part returns the steps of part n.
func Part(steps []Step, n int) []Step {
	var part []Step
	for _, s := range steps {
		if s.Part == n {
			part = append(part, s)
		}
	}
	return part
}

// Setups returns the setups of the walk-throughs in file.
func Setups(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var setups []string
	for _, line := range strings.Split(string(b), "\n") {
		if m := start.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			setups = append(setups, m[1])
		}
	}
	return setups, nil
}

// Steps returns the commands of setup's walk-throughs in the files Files
// lists for it under root, in order.
func Steps(root, setup string) ([]Step, error) {
	var steps []Step
	part := -1
	for _, name := range Files[setup] {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			return nil, err
		}
		inSection, inCode := false, false
		for _, line := range strings.Split(string(b), "\n") {
			trimmed := strings.TrimSpace(line)
			switch m := start.FindStringSubmatch(trimmed); {
			case m != nil:
				inSection = m[1] == setup
				if inSection {
					part++
				}
			case trimmed == end:
				inSection = false
			case !inSection:
			case strings.HasPrefix(trimmed, "```sh"):
				inCode = true
			case strings.HasPrefix(trimmed, "```"):
				inCode = false
			case inCode && trimmed != "" && !strings.HasPrefix(trimmed, "#"):
				command, expect, _ := strings.Cut(trimmed, "# expect: ")
				steps = append(steps, Step{File: name, Command: strings.TrimSpace(command), Expect: strings.TrimSpace(expect), Part: part})
			}
		}
		if inSection {
			return nil, fmt.Errorf("%s: a walk-through has no %s", name, end)
		}
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("no walk-through for %q in %v", setup, Files[setup])
	}
	return steps, nil
}

// Runner runs steps in a folder, with an environment added to the test's.
type Runner struct {
	Dir string
	Env []string
	// Timeout is how long a command is retried until it succeeds or prints
	// what it must: issuance takes a moment, as it would for a person.
	Timeout time.Duration
	// Rewrite, when set, turns a command as written into the one run: only
	// for what the setup cannot have as a user's cluster does, never to
	// change what the command does.
	Rewrite func(string) string
}

// Run runs each step in order and reports each that did not do what the
// walk-through says, with its output. It stops at the first failure: the
// steps after it would start from a state the walk-through does not describe.
func (r Runner) Run(t *testing.T, steps []Step) {
	t.Helper()
	for _, s := range steps {
		command := s.Command
		if r.Rewrite != nil {
			command = r.Rewrite(command)
		}
		rejected := s.Expect == "rejected"
		out, err := r.runUntil(command, func(out string, err error) bool {
			if rejected || s.Expect == "" {
				return (err == nil) != rejected
			}
			return err == nil && strings.TrimSpace(out) == s.Expect
		})
		t.Logf("$ %s\n%s", s.Command, out)
		switch {
		case rejected && err == nil:
			t.Fatalf("%s: %s: succeeded, want a rejection", s.File, s.Command)
		case rejected && !strings.Contains(out, "is invalid"):
			t.Fatalf("%s: %s: failed without a validation error", s.File, s.Command)
		case !rejected && err != nil:
			t.Fatalf("%s: %s: %v", s.File, s.Command, err)
		case !rejected && s.Expect != "" && strings.TrimSpace(out) != s.Expect:
			t.Fatalf("%s: %s: printed %q, want %q", s.File, s.Command, strings.TrimSpace(out), s.Expect)
		}
	}
}

func (r Runner) runUntil(command string, done func(string, error) bool) (string, error) {
	deadline := time.Now().Add(r.Timeout)
	for {
		c := exec.Command("bash", "-o", "pipefail", "-c", command)
		c.Dir = r.Dir
		c.Env = append(os.Environ(), r.Env...)
		out, err := c.CombinedOutput()
		if done(string(out), err) || time.Now().After(deadline) {
			return string(out), err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
