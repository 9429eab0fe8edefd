package webhook

import (
	"errors"
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/internal/kuma"
)

func TestDecodeMesh(t *testing.T) {
	rsa := "rsa-2048"
	tests := map[string]struct {
		name, object string
		want         kuma.Mesh
		wantFields   []string
		wantErr      error
	}{
		"the request's name wins": {
			name: "from-request", object: `{"metadata":{"name":"from-object"},"spec":{"mtls":{"enabledBackend":"cm"}}}`,
			want: kuma.Mesh{Name: "from-request", Spec: kuma.MeshSpec{MTLS: &kuma.MTLS{EnabledBackend: "cm"}}},
		},
		"the object's name when the request has none": {
			object: `{"metadata":{"name":"from-object"}}`,
			want:   kuma.Mesh{Name: "from-object"},
		},
		"the key algorithm annotation": {
			name: "demo", object: `{"metadata":{"annotations":{"meshcert.io/key-algorithm":"rsa-2048"}}}`,
			want: kuma.Mesh{Name: "demo", KeyAlgorithm: &rsa},
		},
		"keys match case-sensitively: Spec is not the spec": {
			name: "demo", object: `{"Spec":{"mtls":{"enabledBackend":"cm"}}}`,
			want: kuma.Mesh{Name: "demo"},
		},
		"a value of the wrong type is a field error": {
			name: "demo", object: `{"spec":{"mtls":{"enabledBackend":1}}}`,
			want:       kuma.Mesh{Name: "demo", Spec: kuma.MeshSpec{MTLS: &kuma.MTLS{}}},
			wantFields: []string{"spec.mtls.enabledBackend"},
		},
		"no object":         {object: ``, wantErr: errNoObject},
		"not a JSON object": {object: `"mesh"`, wantErr: errNotObject},
		"null":              {object: `null`, wantErr: errNotObject},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req := admission.Request{}
			req.Name, req.Object = tc.name, runtime.RawExtension{Raw: []byte(tc.object)}
			got, errs, err := decodeMesh(req)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			var fields []string
			for _, e := range errs {
				fields = append(fields, e.Field)
			}
			if !reflect.DeepEqual(fields, tc.wantFields) {
				t.Errorf("field errors at %v, want %v", fields, tc.wantFields)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}
