package webhook

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"
)

// benchReviews are the admission benchmark's reviews: the examples that
// test/bench also sends, mostly valid.
func benchReviews(b *testing.B) [][]byte {
	b.Helper()
	var out [][]byte
	for _, f := range []string{"documented", "unknown-fields", "external-issuer", "cacert-file", "other-backend-types", "issuerref-missing-name", "many-errors"} {
		y, err := os.ReadFile(filepath.Join("..", "test", "testdata", "meshes", f+".yaml"))
		if err != nil {
			b.Fatal(err)
		}
		obj, err := yaml.YAMLToJSON(y)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, review(admissionv1.Create, string(obj)))
	}
	return out
}

func benchServe(b *testing.B, h admission.Handler) {
	reviews := benchReviews(b)
	wh := NewAdmission(h)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(reviews[i%len(reviews)]))
		req.Header.Set("Content-Type", "application/json")
		wh.ServeHTTP(httptest.NewRecorder(), req)
	}
}

// BenchmarkAdmission compares the validating handler with a no-op one
// through the same admission decoding and encoding (no TLS, no network):
// go test ./webhook -bench Admission -count 10 | benchstat.
func BenchmarkAdmission(b *testing.B) {
	b.Run("handler=noop", func(b *testing.B) {
		benchServe(b, admission.HandlerFunc(func(context.Context, admission.Request) admission.Response { return admission.Allowed("") }))
	})
	b.Run("handler=validate", func(b *testing.B) { benchServe(b, testValidator()) })
	b.Run("handler=default", func(b *testing.B) { benchServe(b, Defaulter{}) })
}
