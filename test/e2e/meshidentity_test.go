package e2e

import (
	"strings"
	"testing"
)

// TestApplyMeshIdentities applies each manifest under testdata/meshidentities
// with the real kubectl and compares what kubectl prints with its golden
// file, and what is stored with what the file says.
func TestApplyMeshIdentities(t *testing.T) {
	tests := map[string]struct {
		rejected bool
		// wantErrors are substrings of the rejection; warning, of a warning.
		wantErrors []string
		warning    string
		// stored are jsonpath queries of the stored object and their answers.
		stored map[string]string
	}{
		"kong-mesh-defaulted": {stored: map[string]string{
			"{.spec.provider.extension.config.issuerRef}": `{"group":"cert-manager.io","kind":"Issuer","name":"mesh-ca"}`,
			"{.spec.provider.extension.config.caCert}":    `{"secret":"demo-ca"}`,
		}},
		"kong-mesh-independent-problems": {rejected: true, wantErrors: []string{
			"spec.provider.extension.config.issuerRef.name: Required value",
			`spec.provider.extension.config.caCert.secret: Invalid value: "other-mesh-ca"`,
		}},
		"kong-mesh-missing-issuer": {
			warning: "Warning: spec.provider.extension.config.issuerRef: Issuer kong-mesh-system/not-created-yet not found",
			stored:  map[string]string{"{.spec.provider.extension.config.issuerRef.name}": "not-created-yet"},
		},
		"spire-annotations": {stored: map[string]string{
			`{.metadata.annotations.meshcert\.io/issuer-kind}`:  "Issuer",
			`{.metadata.annotations.meshcert\.io/issuer-group}`: "cert-manager.io",
		}},
		"spire-annotations-broken": {rejected: true, wantErrors: []string{
			"metadata.annotations[meshcert.io/issuer-name]: Required value",
			`metadata.annotations[meshcert.io/issuer-kind]: Unsupported value: "Certificate"`,
		}},
		"spire-without-config": {rejected: true, wantErrors: []string{
			"spec.provider.spire: Required value: configuration needs to be defined",
		}},
		"outside-system-namespace": {rejected: true, wantErrors: []string{
			`metadata.namespace: Invalid value: "issuance": resource type MeshIdentity can be created only in the system namespace:kong-mesh-system`,
		}},
		"bad-templates": {rejected: true, wantErrors: []string{"spec.spiffeID.trustDomain: Invalid value", "spec.spiffeID.path: Invalid value"}},
		"bundled": {stored: map[string]string{
			"{.spec.provider}": `{"bundled":{"autogenerate":{"enabled":true}},"type":"Bundled"}`,
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			file := "meshidentities/" + name + ".yaml"
			manifest := readManifest(t, file)
			get := func(jsonpath string) kubectlRun {
				return runKubectl(t, "-n", manifest.GetNamespace(), "get", "meshidentity", manifest.GetName(), "--ignore-not-found", "-o", "jsonpath="+jsonpath)
			}
			t.Cleanup(func() { runKubectl(t, "delete", "--ignore-not-found", "-f", file) })

			run := runKubectl(t, "apply", "-f", file)
			switch {
			case tc.rejected:
				if run.exitCode == 0 {
					t.Fatalf("kubectl apply succeeded, want a rejection:\n%s", run)
				}
				for _, want := range append([]string{`The MeshIdentity "` + manifest.GetName() + `" is invalid`}, tc.wantErrors...) {
					if !strings.Contains(run.stderr, want) {
						t.Errorf("stderr lacks %q:\n%s", want, run.stderr)
					}
				}
				if got := get("{.metadata.name}"); got.stdout != "" {
					t.Errorf("a rejected MeshIdentity was stored")
				}
			case run.exitCode != 0:
				t.Fatalf("kubectl apply failed:\n%s", run)
			case tc.warning != "" && !strings.Contains(run.stderr, tc.warning):
				t.Errorf("stderr lacks the warning %q:\n%s", tc.warning, run.stderr)
			case tc.warning == "" && run.stderr != "":
				t.Errorf("unexpected stderr:\n%s", run.stderr)
			}
			for query, want := range tc.stored {
				if got := get(query); got.stdout != want {
					t.Errorf("stored %s = %s, want %s", query, got.stdout, want)
				}
			}
			assertGolden(t, "meshidentity-"+name, run)
		})
	}
}
