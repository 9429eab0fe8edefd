package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/internal/lookup"
)

// emptyCluster answers every lookup with "not found".
type emptyCluster struct{}

func (emptyCluster) SystemSecret(string) (*corev1.Secret, error) { return nil, nil }
func (emptyCluster) Issuer(cmmeta.IssuerReference) (*lookup.IssuerState, error) {
	return nil, nil
}
func (emptyCluster) IssuedBy(string, string) (int, error) { return 0, nil }

func (emptyCluster) MeshServicesMode(string) (string, bool, error) { return "", false, nil }

func testValidator() *Validator {
	return &Validator{
		SystemNamespace: "kong-mesh-system",
		Lookup:          emptyCluster{},
		Now:             func() time.Time { return time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC) },
	}
}

// review wraps a Mesh object in an AdmissionReview body.
func review(op admissionv1.Operation, object string) []byte {
	ar := map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":       "7f0c2b4e-1",
			"kind":      map[string]string{"group": "kuma.io", "version": "v1alpha1", "kind": "Mesh"},
			"resource":  map[string]string{"group": "kuma.io", "version": "v1alpha1", "resource": "meshes"},
			"name":      "demo",
			"operation": op,
			"object":    json.RawMessage(object),
		},
	}
	if object == "" {
		delete(ar["request"].(map[string]any), "object")
	}
	b, _ := json.Marshal(ar)
	return b
}

// serve posts body to handler as the API server would, and decodes the answer.
func serve(t testing.TB, h admission.Handler, contentType string, body []byte) (int, admissionv1.AdmissionResponse) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	if body == nil {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", contentType)
	(&admission.Webhook{Handler: h}).ServeHTTP(rec, req)
	var ar admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &ar); err != nil || ar.Response == nil {
		t.Fatalf("the answer is not an AdmissionReview (%v): %s", err, rec.Body)
	}
	return rec.Code, *ar.Response
}

const meshJSON = `{"apiVersion":"kuma.io/v1alpha1","kind":"Mesh","metadata":{"name":"demo"},"spec":%s}`

func mesh(spec string) string { return strings.Replace(meshJSON, "%s", spec, 1) }

func TestDefaulterPatches(t *testing.T) {
	tests := map[string]struct {
		spec      string
		op        admissionv1.Operation
		wantPatch string
	}{
		"adds kind and group only": {
			spec: `{"mtls":{"backends":[{"name":"a","type":"builtin"},{"name":"b","type":"certmanager","conf":{"issuerRef":{"name":"ca","x":1}}}]}}`,
			wantPatch: `[{"op":"add","path":"/spec/mtls/backends/1/conf/issuerRef/kind","value":"Issuer"},` +
				`{"op":"add","path":"/spec/mtls/backends/1/conf/issuerRef/group","value":"cert-manager.io"}]`,
		},
		"replaces an empty kind": {
			spec:      `{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":{"name":"ca","kind":"","group":"cert-manager.io"}}}]}}`,
			wantPatch: `[{"op":"add","path":"/spec/mtls/backends/0/conf/issuerRef/kind","value":"Issuer"}]`,
		},
		"nothing to default":         {spec: `{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":{"name":"ca","kind":"Issuer","group":"cert-manager.io"}}}]}}`},
		"no mtls":                    {spec: `{}`},
		"type errors are left alone": {spec: `{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":{"name":"ca","kind":7}}}]}}`},
		"delete is not defaulted":    {spec: `{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":{"name":"ca"}}}]}}`, op: admissionv1.Delete},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			op := tc.op
			if op == "" {
				op = admissionv1.Create
			}
			code, resp := serve(t, Defaulter{}, "application/json", review(op, mesh(tc.spec)))
			if code != http.StatusOK || !resp.Allowed {
				t.Fatalf("code %d, allowed %v, result %+v", code, resp.Allowed, resp.Result)
			}
			if diff := cmp.Diff(tc.wantPatch, string(resp.Patch)); diff != "" {
				t.Errorf("patch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidatorAnswers(t *testing.T) {
	tests := map[string]struct {
		op           admissionv1.Operation
		spec         string
		wantAllowed  bool
		wantCode     int32
		wantMessage  string
		wantWarnings int
	}{
		"valid create with a warning": {
			op:           admissionv1.Create,
			spec:         `{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"ca"}}}]}}`,
			wantAllowed:  true,
			wantWarnings: 1,
		},
		"invalid update": {
			op:          admissionv1.Update,
			spec:        `{"mtls":{"enabledBackend":"x","backends":[]}}`,
			wantCode:    http.StatusUnprocessableEntity,
			wantMessage: `Mesh.kuma.io "demo" is invalid: spec.mtls.enabledBackend: Invalid value: "x": has to be set to one of the backends in the mesh`,
		},
		"type errors alone": {
			op:          admissionv1.Create,
			spec:        `{"mtls":{"backends":[{"type":"certmanager","conf":{"issuerRef":"ca"}}]}}`,
			wantCode:    http.StatusUnprocessableEntity,
			wantMessage: `Mesh.kuma.io "demo" is invalid: spec.mtls.backends[0].conf.issuerRef: Invalid value: must be an object, not a string`,
		},
		"delete is allowed": {op: admissionv1.Delete, spec: `"anything"`, wantAllowed: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, resp := serve(t, testValidator(), "application/json", review(tc.op, mesh(tc.spec)))
			if code != http.StatusOK {
				t.Fatalf("HTTP %d", code)
			}
			if resp.Allowed != tc.wantAllowed {
				t.Fatalf("allowed = %v, result %+v", resp.Allowed, resp.Result)
			}
			if len(resp.Warnings) != tc.wantWarnings {
				t.Errorf("warnings = %q, want %d", resp.Warnings, tc.wantWarnings)
			}
			if tc.wantAllowed {
				return
			}
			if resp.Result.Code != tc.wantCode || resp.Result.Message != tc.wantMessage || resp.Result.Reason != "Invalid" {
				t.Errorf("result = %d %s %q, want %d Invalid %q", resp.Result.Code, resp.Result.Reason, resp.Result.Message, tc.wantCode, tc.wantMessage)
			}
		})
	}
}

// TestMalformedRequests: a broken request gets a 4xx denial, never a 500 or a
// panic, from both handlers.
func TestMalformedRequests(t *testing.T) {
	tests := map[string]struct {
		contentType string
		body        []byte
		wantCode    int32
	}{
		"empty body":             {contentType: "application/json", body: nil, wantCode: http.StatusBadRequest},
		"wrong content type":     {contentType: "text/plain", body: review(admissionv1.Create, mesh(`{}`)), wantCode: http.StatusBadRequest},
		"truncated JSON":         {contentType: "application/json", body: review(admissionv1.Create, mesh(`{}`))[:40], wantCode: http.StatusBadRequest},
		"not a review":           {contentType: "application/json", body: []byte(`[1,2]`), wantCode: http.StatusBadRequest},
		"missing object":         {contentType: "application/json", body: review(admissionv1.Create, ""), wantCode: http.StatusBadRequest},
		"object not JSON object": {contentType: "application/json", body: review(admissionv1.Create, `"mesh"`), wantCode: http.StatusBadRequest},
		"over the size limit": {
			contentType: "application/json",
			body:        review(admissionv1.Create, mesh(`{"pad":"`+strings.Repeat("x", 8<<20)+`"}`)),
			wantCode:    http.StatusRequestEntityTooLarge,
		},
	}
	handlers := map[string]admission.Handler{"defaulter": Defaulter{}, "validator": testValidator()}
	for name, tc := range tests {
		for hname, h := range handlers {
			t.Run(name+"/"+hname, func(t *testing.T) {
				code, resp := serve(t, h, tc.contentType, tc.body)
				if code != http.StatusOK || resp.Allowed || resp.Result == nil || resp.Result.Code != tc.wantCode {
					t.Errorf("HTTP %d, allowed %v, result %+v; want a denial with code %d", code, resp.Allowed, resp.Result, tc.wantCode)
				}
			})
		}
	}
}
