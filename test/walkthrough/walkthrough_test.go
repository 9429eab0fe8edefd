package walkthrough

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestEveryWalkthroughIsRun: a walk-through in a file that Files does not
// list for its setup would never be run, and a listed file without one is a
// stale entry.
func TestEveryWalkthroughIsRun(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string][]string{}
	for setup, files := range Files {
		for _, f := range files {
			listed[f] = append(listed[f], setup)
		}
	}
	for _, f := range append(docs, filepath.Join(root, "README.md")) {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		setups, err := Setups(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range setups {
			if !slices.Contains(listed[rel], s) {
				t.Errorf("%s has a %q walk-through that is not run: add it to Files[%q], where its steps belong in the sequence", rel, s, s)
			}
		}
		for _, s := range listed[rel] {
			if !slices.Contains(setups, s) {
				t.Errorf("%s is in Files[%q] but has no such walk-through", rel, s)
			}
		}
	}
	for setup := range Files {
		if _, err := Steps(root, setup); err != nil {
			t.Error(err)
		}
	}
}

func TestSteps(t *testing.T) {
	dir := t.TempDir()
	doc := "# A doc\n\n<!-- walkthrough: node -->\n```sh\nkubectl get pods # expect: No resources found\n# a comment\n\nkubectl apply -f x.yaml # expect: rejected\n```\n<!-- /walkthrough -->\n\n```sh\nnot run\n```\n" +
		"<!-- walkthrough: local -->\n```sh\nmake run\n```\n<!-- /walkthrough -->\n" +
		"Then, by hand:\n<!-- walkthrough: node -->\n```sh\nkubectl get nodes\n```\n<!-- /walkthrough -->\n"
	if err := os.WriteFile(filepath.Join(dir, "doc.md"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	unclosed := "<!-- walkthrough: node -->\n```sh\nls\n```\n"
	if err := os.WriteFile(filepath.Join(dir, "unclosed.md"), []byte(unclosed), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		files   []string
		setup   string
		want    []Step
		wantErr bool
	}{
		"only its setup's commands, with what they must print, in parts": {
			files: []string{"doc.md"}, setup: "node",
			want: []Step{
				{File: "doc.md", Command: "kubectl get pods", Expect: "No resources found"},
				{File: "doc.md", Command: "kubectl apply -f x.yaml", Expect: "rejected"},
				{File: "doc.md", Command: "kubectl get nodes", Part: 1},
			},
		},
		"another setup": {
			files: []string{"doc.md"}, setup: "local",
			want: []Step{{File: "doc.md", Command: "make run"}},
		},
		"a walk-through without its end": {files: []string{"unclosed.md"}, setup: "node", wantErr: true},
		"no walk-through":                {files: []string{"doc.md"}, setup: "cluster", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			saved := Files
			t.Cleanup(func() { Files = saved })
			Files = map[string][]string{tc.setup: tc.files}
			got, err := Steps(dir, tc.setup)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want an error: %v", err, tc.wantErr)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
