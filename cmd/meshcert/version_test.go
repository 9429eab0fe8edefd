package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFIPSBuild(t *testing.T) {
	tests := map[string]struct {
		build []debug.BuildSetting
		want  string
	}{
		"no FIPS module":  {build: []debug.BuildSetting{{Key: "GOOS", Value: "linux"}}, want: "off"},
		"no build info":   {want: "off"},
		"a frozen module": {build: []debug.BuildSetting{{Key: "GOFIPS140", Value: "v1.0.0-c2097c7c"}}, want: "v1.0.0-c2097c7c"},
		"the latest code": {build: []debug.BuildSetting{{Key: "GOFIPS140", Value: "latest"}}, want: "latest"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := fipsBuild(tc.build); got != tc.want {
				t.Errorf("fipsBuild = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFIPSBinary builds meshcert as `make build FIPS=1` does and checks that
// its --version reports Go's FIPS 140-3 module, and the mode the fips140
// GODEBUG setting gives it: on by default, as GOFIPS140 makes it.
func TestFIPSBinary(t *testing.T) {
	plan, err := exec.Command("make", "--no-print-directory", "-n", "-C", "../..", "build", "FIPS=1", "VERSION=v0.0.0-fips").Output()
	if err != nil {
		t.Fatalf("make -n build FIPS=1: %v", err)
	}
	build := strings.TrimSpace(string(plan))
	if !strings.Contains(build, "GOFIPS140=v1.0.0 ") || !strings.Contains(build, "-o bin/meshcert ") {
		t.Fatalf("make build FIPS=1 runs %q, want a GOFIPS140=v1.0.0 build of bin/meshcert", build)
	}
	out := filepath.Join(t.TempDir(), "meshcert")
	cmd := exec.Command("sh", "-c", strings.Replace(build, "-o bin/meshcert ", "-o "+out+" ", 1))
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, b)
	}

	tests := map[string]struct {
		godebug  string
		wantMode string
	}{
		"by default":     {wantMode: "on"},
		"fips140=only":   {godebug: "fips140=only", wantMode: "only"},
		"turned off":     {godebug: "fips140=off", wantMode: "off"},
		"other settings": {godebug: "http2client=0", wantMode: "on"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(out, "--version")
			cmd.Env = append(os.Environ(), "GODEBUG="+tc.godebug)
			b, err := cmd.Output()
			if err != nil {
				t.Fatalf("--version: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) != 3 || lines[0] != "v0.0.0-fips" ||
				!strings.HasPrefix(lines[1], "GOFIPS140: v1.0.0-") || !strings.HasSuffix(lines[1], "(Go Cryptographic Module v1.0.0)") ||
				lines[2] != "FIPS 140-3 mode: "+tc.wantMode {
				t.Errorf("--version printed %q, want the version, GOFIPS140 v1.0.0 and mode %s", lines, tc.wantMode)
			}
		})
	}
}
