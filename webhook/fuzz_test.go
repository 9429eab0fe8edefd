package webhook

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"
)

// defaultedPath is the only place defaulting may write.
var defaultedPath = regexp.MustCompile(`^/spec/mtls/backends/[0-9]+/conf/issuerRef/(kind|group)$`)

// FuzzAdmissionReview feeds arbitrary AdmissionReview bodies to both handlers.
// Invariants: no panic; every answer is an AdmissionReview and never a 5xx;
// validation is deterministic; defaulting writes only issuerRef.kind and
// .group, and defaulting its own output again changes nothing.
func FuzzAdmissionReview(f *testing.F) {
	manifests, _ := filepath.Glob("../test/testdata/meshes/*.yaml")
	for _, m := range manifests {
		b, err := os.ReadFile(m)
		if err != nil {
			f.Fatal(err)
		}
		obj, err := yaml.YAMLToJSON(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(review(admissionv1.Create, string(obj)))
	}
	f.Add(review(admissionv1.Update, `{"spec":{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":{}}}]}}}`))
	f.Add([]byte(`{"request":{"operation":"CREATE","object":{"spec":[]}}}`))
	f.Add(review(admissionv1.Create, `{"spec":{"mtls":{"backends":[{"type":"certmanager","conf":null},{"type":"certmanager","conf":{"issuerRef":null,"caCert":{}}}]}}}`))
	f.Add(review(admissionv1.Create, `{"Spec":{"mtls":{}},"spec":null}`))
	f.Add([]byte(`{`))

	f.Fuzz(func(t *testing.T, body []byte) {
		validator := testValidator()
		_, first := serve(t, validator, "application/json", body)
		_, second := serve(t, validator, "application/json", body)
		if !reflect.DeepEqual(first, second) {
			t.Fatalf("validation is not deterministic:\n%+v\n%+v", first, second)
		}
		if first.Result != nil && first.Result.Code >= http.StatusInternalServerError {
			t.Fatalf("validator answered %d: %s", first.Result.Code, first.Result.Message)
		}

		_, defaulted := serve(t, Defaulter{}, "application/json", body)
		if defaulted.Result != nil && defaulted.Result.Code >= http.StatusInternalServerError {
			t.Fatalf("defaulter answered %d: %s", defaulted.Result.Code, defaulted.Result.Message)
		}
		if len(defaulted.Patch) == 0 {
			return
		}
		var ops []struct{ Op, Path string }
		if err := json.Unmarshal(defaulted.Patch, &ops); err != nil {
			t.Fatalf("patch is not JSON: %v", err)
		}
		for _, op := range ops {
			if op.Op != "add" || !defaultedPath.MatchString(op.Path) {
				t.Fatalf("patch touches %s %s", op.Op, op.Path)
			}
		}
		var ar admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &ar); err != nil {
			t.Fatalf("a patch for a body that does not decode: %v", err)
		}
		patch, err := jsonpatch.DecodePatch(defaulted.Patch)
		if err != nil {
			t.Fatal(err)
		}
		patched, err := patch.Apply(ar.Request.Object.Raw)
		if err != nil {
			t.Fatalf("the patch does not apply to its own object: %v", err)
		}
		_, again := serve(t, Defaulter{}, "application/json", review(ar.Request.Operation, string(patched)))
		if len(again.Patch) != 0 {
			t.Fatalf("defaulting is not idempotent: second patch %s", again.Patch)
		}
	})
}

// FuzzDefaultAndValidate drives defaulting and validation directly with any
// spec, past the HTTP layer, for more executions per second than
// FuzzAdmissionReview. Invariants: no panic; validation is deterministic; a
// patch touches only issuerRef.kind and .group; defaulting is idempotent.
func FuzzDefaultAndValidate(f *testing.F) {
	f.Add([]byte(`{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"ca"},"caCert":{"secret":"s"}}}]}}`))
	f.Add([]byte(`{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":{"kind":""}}},{"type":"provided","conf":{"cert":{"inline":"@@"}}}]}}`))
	f.Add([]byte(`{"mtls":{"enabledBackend":"x","backends":[{"name":"x","type":"certmanager","dpCert":{"rotation":{"expiration":"99999999999999999y"}}}]}}`))
	f.Fuzz(func(t *testing.T, spec []byte) {
		object, err := json.Marshal(map[string]any{"metadata": map[string]any{"name": "demo"}, "spec": json.RawMessage(spec)})
		if err != nil {
			return // Not JSON: the API server never sends it.
		}
		req := func(obj []byte) admission.Request {
			r := admission.Request{}
			r.Operation, r.Name, r.Object.Raw = admissionv1.Create, "demo", obj
			return r
		}
		ctx := context.Background()
		v := testValidator()
		first, second := v.Handle(ctx, req(object)), v.Handle(ctx, req(object))
		if !reflect.DeepEqual(first, second) {
			t.Fatal("validation is not deterministic")
		}
		if first.Result != nil && first.Result.Code >= http.StatusInternalServerError {
			t.Fatalf("validator answered %d: %s", first.Result.Code, first.Result.Message)
		}
		checkDefaulting(t, object, defaultedPath, func(obj []byte) admission.Response { return Defaulter{}.Handle(ctx, req(obj)) })
	})
}

// checkDefaulting holds a defaulter's answer for object to its invariants:
// a patch adds only at allowed paths, applies to the object, and defaulting
// its result again changes nothing.
func checkDefaulting(t *testing.T, object []byte, allowed *regexp.Regexp, handle func([]byte) admission.Response) {
	t.Helper()
	d := handle(object)
	if d.Result != nil && d.Result.Code >= http.StatusInternalServerError {
		t.Fatalf("defaulter answered %d: %s", d.Result.Code, d.Result.Message)
	}
	if len(d.Patches) == 0 {
		return
	}
	for _, op := range d.Patches {
		if op.Operation != "add" || !allowed.MatchString(op.Path) {
			t.Fatalf("patch touches %s %s", op.Operation, op.Path)
		}
	}
	raw, err := json.Marshal(d.Patches)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(object)
	if err != nil {
		t.Fatalf("the patch does not apply: %v", err)
	}
	if again := handle(patched); len(again.Patches) != 0 {
		t.Fatalf("defaulting is not idempotent: %v", again.Patches)
	}
}

// identityDefaultedPath is the only place MeshIdentity defaulting may write.
var identityDefaultedPath = regexp.MustCompile(`^(/spec/provider/extension/config/issuerRef/(kind|group)|/metadata/annotations/meshcert\.io~1issuer-(kind|group))$`)

// FuzzMeshIdentityAdmission drives MeshIdentity defaulting and validation with
// any annotations and spec. Invariants: no panic; no 5xx; validation is
// deterministic; a patch touches only the issuer's kind and group and
// applies; defaulting is idempotent.
func FuzzMeshIdentityAdmission(f *testing.F) {
	manifests, _ := filepath.Glob("../test/testdata/meshidentities/*.yaml")
	for _, m := range manifests {
		b, err := os.ReadFile(m)
		if err != nil {
			f.Fatal(err)
		}
		var obj struct {
			Metadata struct {
				Annotations json.RawMessage `json:"annotations"`
			} `json:"metadata"`
			Spec json.RawMessage `json:"spec"`
		}
		if err := yaml.Unmarshal(b, &obj); err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(obj.Metadata.Annotations), []byte(obj.Spec))
	}
	f.Add([]byte(`{"meshcert.io/issuer-group":""}`), []byte(`{"provider":{"type":"Spire"},"spiffeID":{"path":"{{range 100000000}}{{end}}"}}`))
	f.Fuzz(func(t *testing.T, annotations, spec []byte) {
		object, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"name": "id", "namespace": "kong-mesh-system", "labels": map[string]string{"kuma.io/mesh": "demo"}, "annotations": json.RawMessage(annotations)},
			"spec":     json.RawMessage(spec),
		})
		if err != nil {
			return // Not JSON: the API server never sends it.
		}
		req := func(obj []byte) admission.Request {
			r := admission.Request{}
			r.Operation, r.Name, r.Namespace, r.Object.Raw = admissionv1.Create, "id", "kong-mesh-system", obj
			return r
		}
		ctx := context.Background()
		v := &MeshIdentityValidator{SystemNamespace: "kong-mesh-system", LocalZone: "zone", Lookup: emptyCluster{}, Now: testValidator().Now}
		first, second := v.Handle(ctx, req(object)), v.Handle(ctx, req(object))
		if !reflect.DeepEqual(first, second) {
			t.Fatal("validation is not deterministic")
		}
		if first.Result != nil && first.Result.Code >= http.StatusInternalServerError {
			t.Fatalf("validator answered %d: %s", first.Result.Code, first.Result.Message)
		}
		checkDefaulting(t, object, identityDefaultedPath, func(obj []byte) admission.Response { return MeshIdentityDefaulter{}.Handle(ctx, req(obj)) })
	})
}
