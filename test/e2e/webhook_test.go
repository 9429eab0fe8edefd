package e2e

import (
	"context"
	stderrors "errors"
	"net/http"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/webhook"
)

var meshGVK = schema.GroupVersionKind{Group: "kuma.io", Version: "v1alpha1", Kind: "Mesh"}

const denied = `admission webhook "` + webhook.ValidatingWebhookName + `" denied the request: `

// TestApplyMeshes applies each manifest under testdata/meshes with the real
// kubectl and compares what kubectl prints with its golden file.
func TestApplyMeshes(t *testing.T) {
	tests := map[string]struct {
		file     string
		rejected bool
		warning  string
		// wantSpec is the spec stored after the apply: the file's spec with
		// these issuerRef fields added to backend 0.
		defaulted map[string]string
		// errors that the rejection must list, each a substring.
		wantErrors []string
	}{
		"documented example is defaulted": {
			file:      "documented",
			defaulted: map[string]string{"kind": "Issuer", "group": "cert-manager.io"},
		},
		"unknown fields are kept": {
			file:      "unknown-fields",
			defaulted: map[string]string{"kind": "Issuer", "group": "cert-manager.io"},
		},
		"external issuer is not defaulted":  {file: "external-issuer", defaulted: map[string]string{}},
		"mesh without mtls is untouched":    {file: "no-mtls", defaulted: map[string]string{}},
		"other backend types are untouched": {file: "other-backend-types", defaulted: map[string]string{}},
		"issuerRef without name": {
			file: "issuerref-missing-name", rejected: true,
			wantErrors: []string{"spec.mtls.backends[0].conf.issuerRef.name: Required value"},
		},
		"issuerRef with blank name": {
			file: "issuerref-blank-name", rejected: true,
			wantErrors: []string{"spec.mtls.backends[0].conf.issuerRef.name: Required value"},
		},
		"issuerRef with invalid name": {
			file: "issuerref-invalid-name", rejected: true,
			wantErrors: []string{`spec.mtls.backends[0].conf.issuerRef.name: Invalid value: "My_Issuer"`},
		},
		"issuerRef with wrong kind": {
			file: "issuerref-wrong-kind", rejected: true,
			wantErrors: []string{`spec.mtls.backends[0].conf.issuerRef.kind: Unsupported value: "Certificate"`},
		},
		"caCert secret missing": {
			file: "cacert-secret-missing", rejected: true,
			wantErrors: []string{`spec.mtls.backends[0].conf.caCert.secret: Not found: "no-such-ca"`},
		},
		"caCert secret of wrong type": {
			file: "cacert-secret-opaque", rejected: true,
			wantErrors: []string{`has type "Opaque"`},
		},
		"caCert secret is global": {
			file: "cacert-secret-global", rejected: true,
			wantErrors: []string{`is a global secret (type "system.kuma.io/global-secret")`},
		},
		"caCert secret of other mesh": {
			file: "cacert-secret-other-mesh", rejected: true,
			wantErrors: []string{`belongs to mesh "other"`},
		},
		"caCert secret without mesh label": {
			file: "cacert-secret-unlabelled", rejected: true,
			wantErrors: []string{`belongs to mesh "default" (it has no kuma.io/mesh label)`},
		},
		"caCert secret in other namespace": {
			file: "cacert-secret-other-namespace", rejected: true,
			wantErrors: []string{`Not found: "elsewhere-ca": no Secret "elsewhere-ca" in the system namespace "kong-mesh-system"`},
		},
		"leaf certificate as CA": {
			file: "cacert-leaf", rejected: true,
			wantErrors: []string{
				"cert[0]: basic constraint 'CA' must be set to 'true'",
				"cert[0]: key usage extension 'keyCertSign' must be set",
				"cert[0]: key usage extension 'keyAgreement' must NOT be set",
			},
		},
		"expired CA": {
			file: "cacert-expired", rejected: true,
			wantErrors: []string{"cert[0]: expired at 2020-01-01T00:00:00Z"},
		},
		"caCert with two sources": {
			file: "cacert-two-sources", rejected: true,
			wantErrors: []string{"spec.mtls.backends[0].conf.caCert: Invalid value: exactly one of secret, inline, inlineString or file must be set, but secret and file are set"},
		},
		"many errors at once": {
			file: "many-errors", rejected: true,
			wantErrors: []string{
				`spec.mtls.backends[1].name: Invalid value: "cert-manager": "cert-manager" name is already used for another backend`,
				`spec.mtls.backends[1].mode: Unsupported value: "STRICTEST"`,
				`spec.mtls.backends[0].dpCert.rotation.expiration: Invalid value: "one-day": has to be a valid format`,
				`spec.mtls.backends[1].dpCert.requestTimeout: Invalid value: "10 seconds": has to be a valid format`,
				`spec.mtls.enabledBackend: Invalid value: "cert-manager-3": has to be set to one of the backends in the mesh`,
				"spec.mtls.backends[0].conf.issuerRef.name: Required value",
				`spec.mtls.backends[0].conf.issuerRef.kind: Unsupported value: "Certificate"`,
				"spec.mtls.backends[1].conf.caCert: Required value",
			},
		},
		"independent problems are reported together": {
			file: "independent-problems", rejected: true,
			wantErrors: []string{
				"spec.mtls.backends[0].conf.issuerRef.name: Required value",
				`spec.mtls.backends[0].conf.caCert.secret: Not found: "does-not-exist"`,
			},
		},
		"a type error does not hide another backend's problems": {
			file: "wrong-type-and-rules", rejected: true,
			wantErrors: []string{
				"spec.mtls.backends[0].mode: Invalid value: must be a string, not a number",
				"spec.mtls.backends[1].conf.issuerRef.name: Required value",
			},
		},
		"an unknown key algorithm": {
			file: "key-algorithm-unknown", rejected: true,
			wantErrors: []string{`metadata.annotations[meshcert.io/key-algorithm]: Unsupported value: "dsa-1024": supported values: "ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"`},
		},
		"values of the wrong type": {
			file: "wrong-types", rejected: true,
			wantErrors: []string{
				"spec.mtls.skipValidation: Invalid value: must be a boolean, not a string",
				"spec.mtls.backends[0].conf.issuerRef: Invalid value: must be an object, not a string",
				"spec.mtls.backends[1]: Invalid value: must be an object, not a string",
			},
		},
		"missing issuer warns": {
			file:      "missing-issuer",
			defaulted: map[string]string{"kind": "Issuer", "group": "cert-manager.io"},
			warning:   "Warning: spec.mtls.backends[0].conf.issuerRef: Issuer kong-mesh-system/not-created-yet not found",
		},
		"skipValidation warns and skips lookups": {
			file:      "skip-validation",
			defaulted: map[string]string{"kind": "Issuer", "group": "cert-manager.io"},
			warning:   "Warning: spec.mtls.skipValidation: is true",
		},
		"caCert file warns": {
			file:      "cacert-file",
			defaulted: map[string]string{"group": "cert-manager.io"},
			warning:   "Warning: spec.mtls.backends[0].conf.caCert.file:",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			file := "meshes/" + tc.file + ".yaml"
			manifest := readManifest(t, file)
			t.Cleanup(func() { deleteMesh(t, manifest.GetName()) })

			run := runKubectl(t, "apply", "-f", file)
			runs := []kubectlRun{run}
			if tc.rejected {
				if run.exitCode == 0 {
					t.Fatalf("kubectl apply succeeded, want a rejection:\n%s", run)
				}
				for _, want := range append([]string{`The Mesh "` + manifest.GetName() + `" is invalid`}, tc.wantErrors...) {
					if !strings.Contains(run.stderr, want) {
						t.Errorf("stderr lacks %q:\n%s", want, run.stderr)
					}
				}
				if got := getMesh(t, manifest.GetName()); got != nil {
					t.Errorf("a rejected Mesh was stored: %v", got.Object)
				}
				assertInvalidStatus(t, manifest, len(tc.wantErrors))
			} else {
				if run.exitCode != 0 {
					t.Fatalf("kubectl apply failed:\n%s", run)
				}
				if tc.warning != "" && !strings.Contains(run.stderr, tc.warning) {
					t.Errorf("stderr lacks the warning %q:\n%s", tc.warning, run.stderr)
				}
				if tc.warning == "" && run.stderr != "" {
					t.Errorf("unexpected stderr:\n%s", run.stderr)
				}
				assertStoredSpec(t, manifest, tc.defaulted)
				runs = append(runs, assertStable(t, file, manifest, len(tc.defaulted) > 0)...)
			}
			assertGolden(t, tc.file, runs...)
		})
	}
}

// TestUpdateThatBreaksAMesh checks that UPDATE is validated like CREATE, and a
// rejected update leaves the stored Mesh as it was.
func TestUpdateThatBreaksAMesh(t *testing.T) {
	base := readManifest(t, "meshes/update-base.yaml")
	t.Cleanup(func() { deleteMesh(t, base.GetName()) })
	if run := runKubectl(t, "apply", "-f", "meshes/update-base.yaml"); run.exitCode != 0 {
		t.Fatalf("creating the base Mesh:\n%s", run)
	}
	before := getMesh(t, base.GetName())

	run := runKubectl(t, "apply", "-f", "meshes/update-broken.yaml")
	if run.exitCode == 0 {
		t.Fatalf("the breaking update was accepted:\n%s", run)
	}
	for _, want := range []string{`The Mesh "updated" is invalid`, `spec.mtls.enabledBackend: Invalid value: "cert-manager-2": has to be set to one of the backends in the mesh`} {
		if !strings.Contains(run.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, run.stderr)
		}
	}
	after := getMesh(t, base.GetName())
	if after.GetResourceVersion() != before.GetResourceVersion() {
		t.Errorf("the stored Mesh changed: resourceVersion %s -> %s", before.GetResourceVersion(), after.GetResourceVersion())
	}
	assertGolden(t, "update-broken", run)
}

func readManifest(t *testing.T, file string) *unstructured.Unstructured {
	t.Helper()
	b, err := testdataFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(b, &u.Object); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return u
}

func getMesh(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(meshGVK)
	err := testEnv.cluster.Client.Get(context.Background(), client.ObjectKey{Name: name}, u)
	if client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	if err != nil {
		return nil
	}
	return u
}

func deleteMesh(t *testing.T, name string) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(meshGVK)
	u.SetName(name)
	if err := client.IgnoreNotFound(testEnv.cluster.Client.Delete(context.Background(), u)); err != nil {
		t.Errorf("deleting mesh %s: %v", name, err)
	}
}

// assertStoredSpec checks that the stored spec is the manifest's spec with
// only the given issuerRef fields of backend 0 added.
func assertStoredSpec(t *testing.T, manifest *unstructured.Unstructured, defaulted map[string]string) {
	t.Helper()
	want := manifest.DeepCopy()
	for k, v := range defaulted {
		backends, _, _ := unstructured.NestedSlice(want.Object, "spec", "mtls", "backends")
		b := backends[0].(map[string]any)
		if err := unstructured.SetNestedField(b, v, "conf", "issuerRef", k); err != nil {
			t.Fatal(err)
		}
		if err := unstructured.SetNestedSlice(want.Object, backends, "spec", "mtls", "backends"); err != nil {
			t.Fatal(err)
		}
	}
	got := getMesh(t, manifest.GetName())
	if got == nil {
		t.Fatal("the Mesh was not stored")
	}
	wantSpec, _ := yaml.Marshal(want.Object["spec"])
	gotSpec, _ := yaml.Marshal(got.Object["spec"])
	if string(wantSpec) != string(gotSpec) {
		t.Errorf("stored spec differs\n--- got:\n%s\n--- want:\n%s", gotSpec, wantSpec)
	}
}

// assertInvalidStatus creates the manifest as a dry run through the API, and
// checks the status every client sees: the webhook's denial, reason Invalid
// (422), and one cause per error.
func assertInvalidStatus(t *testing.T, manifest *unstructured.Unstructured, errors int) {
	t.Helper()
	err := testEnv.cluster.Client.Create(context.Background(), manifest.DeepCopy(), client.DryRunAll)
	var status apierrors.APIStatus
	if !stderrors.As(err, &status) || !apierrors.IsInvalid(err) {
		t.Fatalf("dry-run create returned %v, want an Invalid status", err)
	}
	s := status.Status()
	if want := denied + `Mesh.kuma.io "` + manifest.GetName() + `" is invalid`; !strings.HasPrefix(s.Message, want) {
		t.Errorf("status message %q does not start with %q", s.Message, want)
	}
	if s.Code != http.StatusUnprocessableEntity {
		t.Errorf("status code %d, want 422", s.Code)
	}
	if s.Details == nil || len(s.Details.Causes) != errors {
		t.Errorf("status details %+v, want %d causes", s.Details, errors)
	}
}

// assertStable applies an accepted manifest again. The mutating webhook must
// produce the stored object exactly, so nothing is written: kubectl diff sees
// no difference and the resourceVersion stays. kubectl itself says
// "unchanged" only when no default was added inside spec.mtls.backends: its
// client-side apply sends CRD changes as a JSON merge patch, which replaces a
// list wholesale, so a list whose items got defaults always yields a patch
// (and the webhook then restores the same defaults).
func assertStable(t *testing.T, file string, manifest *unstructured.Unstructured, defaultedInList bool) []kubectlRun {
	t.Helper()
	before := getMesh(t, manifest.GetName())
	diff := runKubectl(t, "diff", "-f", file)
	if diff.exitCode != 0 || diff.stdout != "" {
		t.Errorf("kubectl diff after apply reports a change:\n%s", diff)
	}
	again := runKubectl(t, "apply", "-f", file)
	if again.exitCode != 0 {
		t.Fatalf("second apply failed:\n%s", again)
	}
	if after := getMesh(t, manifest.GetName()); after.GetResourceVersion() != before.GetResourceVersion() {
		t.Errorf("second apply wrote the Mesh: resourceVersion %s -> %s", before.GetResourceVersion(), after.GetResourceVersion())
	}
	if want := "mesh.kuma.io/" + manifest.GetName() + " unchanged\n"; !defaultedInList && again.stdout != want {
		t.Errorf("second apply printed %q, want %q", again.stdout, want)
	}
	return []kubectlRun{diff, again}
}
