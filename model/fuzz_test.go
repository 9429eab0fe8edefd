package model

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParseMeshSpec: any JSON, or none, parses without panic, the same way
// every time, with every error rooted at spec.
func FuzzParseMeshSpec(f *testing.F) {
	f.Add([]byte(`{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","dpCert":{"rotation":{"expiration":"1d"}},"conf":{"issuerRef":{"name":"ca"},"caCert":{"inline":"aGk="}}}]}}`))
	f.Add([]byte(`{"mtls":{"backends":[null,1,"x",[],{"type":"certmanager","conf":[]}]}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		spec, errs := ParseMeshSpec(raw)
		again, errsAgain := ParseMeshSpec(raw)
		if !reflect.DeepEqual(spec, again) || !reflect.DeepEqual(errs, errsAgain) {
			t.Fatal("parsing is not deterministic")
		}
		for _, e := range errs {
			if !strings.HasPrefix(e.Field, "spec") {
				t.Fatalf("error outside spec: %v", e)
			}
		}
	})
}
