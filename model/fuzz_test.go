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

// FuzzDecodeMesh: the typed fast path of DecodeMesh reads exactly what the
// generic walk reads, whenever it succeeds; and DecodeMesh never panics.
func FuzzDecodeMesh(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"demo"},"spec":{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","mode":"STRICT","dpCert":{"rotation":{"expiration":"1d"},"requestTimeout":"5s"},"conf":{"issuerRef":{"name":"ca"},"caCert":{"inline":"aGk=","secret":""}}},null,{"type":"builtin","conf":{"caCert":{"RSAbits":2048}}}]}}}`))
	f.Add([]byte(`{"spec":{"mtls":{"backends":[{"type":"certmanager","conf":null},{"type":"certmanager","conf":{"issuerRef":null,"caCert":{}}}]}}}`))
	f.Add([]byte(`{"Spec":{"mtls":{}},"spec":null}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, _, _ = DecodeMesh(raw, "")
		_, _, _ = DecodeMesh(raw, "demo")
		typed, ok := decodeTyped(raw)
		if !ok {
			return
		}
		generic, errs, err := decodeGeneric(raw)
		if err != nil || len(errs) > 0 {
			t.Fatalf("the typed path took what the generic one rejects: %v %v", err, errs)
		}
		if !reflect.DeepEqual(typed, generic.Spec) {
			t.Fatalf("the paths differ:\ntyped:   %#v\ngeneric: %#v", typed, generic)
		}
	})
}
