// Package image checks the Dockerfile without a Docker engine: its stages
// and user as data, and its build command by running it.
package image

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// instructions reads a Dockerfile into its instructions, continuation lines
// joined and comments dropped.
func instructions(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	current := ""
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && current == "") {
			continue
		}
		current += " " + strings.TrimSuffix(trimmed, "\\")
		if !strings.HasSuffix(trimmed, "\\") {
			out = append(out, strings.Join(strings.Fields(current), " "))
			current = ""
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	ins := instructions(t, "../../Dockerfile")
	var froms []string
	lastFrom := 0
	for i, in := range ins {
		if strings.HasPrefix(in, "FROM ") {
			froms = append(froms, in)
			lastFrom = i
		}
	}
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "FROM golang:1.26 AS build") ||
		!regexp.MustCompile(`^FROM gcr\.io/distroless/static[-a-z0-9]*:nonroot$`).MatchString(froms[1]) {
		t.Fatalf("stages %q, want a Go builder then distroless static nonroot", froms)
	}
	final := ins[lastFrom:]
	for _, want := range []string{"USER 65532:65532", `ENTRYPOINT ["/meshcert"]`, "COPY --from=build /out/meshcert /meshcert"} {
		if !contains(final, want) {
			t.Errorf("the runtime stage lacks %q: %q", want, final)
		}
	}
	for _, in := range final[1:] {
		if strings.HasPrefix(in, "COPY") && in != "COPY --from=build /out/meshcert /meshcert" {
			t.Errorf("the runtime stage copies more than the binary: %q", in)
		}
	}

	// Run the builder's go build, as the image would, with and without the
	// FIPS build argument, and check each binary.
	var build string
	for _, in := range ins[:lastFrom] {
		if strings.HasPrefix(in, "RUN ") && strings.Contains(in, "go build") {
			build = strings.TrimPrefix(in, "RUN ")
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "GOFIPS140=${FIPS:+v1.0.0}", "-trimpath", "-X main.version=${VERSION}", " ./cmd/meshcert"} {
		if !strings.Contains(build, want) {
			t.Errorf("the build command %q lacks %q", build, want)
		}
	}
	if !contains(ins[:lastFrom], "ARG FIPS=") {
		t.Error("the build stage has no FIPS argument, off by default")
	}
	tests := map[string]struct {
		fips       string
		wantModule string
		wantMode   string
	}{
		"the default image": {wantModule: "GOFIPS140: off (Go Cryptographic Module latest)", wantMode: "FIPS 140-3 mode: off"},
		"FIPS=1":            {fips: "1", wantModule: "GOFIPS140: v1.0.0-", wantMode: "FIPS 140-3 mode: on"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "meshcert")
			cmd := exec.Command("sh", "-c", strings.ReplaceAll(build, "/out/meshcert", out))
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "VERSION=v0.0.0-image-test", "FIPS="+tc.fips)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", build, err, b)
			}
			version, err := exec.Command(out, "--version").Output()
			lines := strings.Split(strings.TrimSpace(string(version)), "\n")
			if err != nil || len(lines) != 3 || lines[0] != "v0.0.0-image-test" || !strings.HasPrefix(lines[1], tc.wantModule) || lines[2] != tc.wantMode {
				t.Errorf("--version printed %q (%v), want the injected version, %q and %q", version, err, tc.wantModule, tc.wantMode)
			}
			f, err := elf.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Error("the binary is dynamically linked; distroless static has no libc")
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
