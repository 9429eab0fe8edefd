package e2e

import (
	"strings"
	"testing"
)

// TestKumaCRDsServeAsKumas: the Kuma-compatible CRDs answer to Kuma's short
// names, refuse (kubectl's strict validation) or prune what Kuma's schemas do
// not know, and keep an extension's config as written.
func TestKumaCRDsServeAsKumas(t *testing.T) {
	file := "kuma/meshidentity-unknown-fields.yaml"
	strict := runKubectl(t, "apply", "--dry-run=server", "-f", file)
	if strict.exitCode == 0 || !strings.Contains(strict.stderr, `unknown field "spec.provider.extension.notConfig", unknown field "spec.selector.pod"`) {
		t.Errorf("strict validation did not name the unknown fields, and only them:\n%s", strict)
	}
	if run := runKubectl(t, "apply", "--validate=false", "-f", file); run.exitCode != 0 {
		t.Fatalf("applying %s:\n%s", file, run)
	}
	t.Cleanup(func() { runKubectl(t, "delete", "-f", file) })

	tests := map[string]struct {
		args []string
		want string
	}{
		"an extension's config is kept": {
			args: []string{"-n", "kong-mesh-system", "get", "mid", "pruned", "-o", "jsonpath={.spec.provider.extension.config}"},
			want: `{"anything":{"kept":true},"issuerRef":{"name":"local-ca"}}`,
		},
		"unknown fields elsewhere are pruned": {
			args: []string{"-n", "kong-mesh-system", "get", "meshidentity", "pruned", "-o", "jsonpath={.spec.selector}{.spec.provider.extension.notConfig}"},
			want: `{"dataplane":{"matchLabels":{"app":"web"}}}`,
		},
		"MeshTrust answers to mtrust": {
			args: []string{"-n", "kong-mesh-system", "get", "mtrust", "demo-trust", "-o", "jsonpath={.spec.trustDomain}"},
			want: "demo.example.com",
		},
		"Dataplane answers to dp": {
			args: []string{"get", "dp", "-A", "-o", "name"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			run := runKubectl(t, tc.args...)
			if run.exitCode != 0 {
				t.Fatalf("kubectl failed:\n%s", run)
			}
			if tc.want != "" && strings.TrimSpace(run.stdout) != tc.want {
				t.Errorf("got %s, want %s", run.stdout, tc.want)
			}
		})
	}

	rejected := runKubectl(t, "apply", "--dry-run=server", "-f", "kuma/meshtrust-no-bundles.yaml")
	if rejected.exitCode == 0 || !strings.Contains(rejected.stderr, "spec.caBundles: Required value") {
		t.Errorf("a MeshTrust without caBundles was not rejected by its schema:\n%s", rejected)
	}
}
