package kuma

import (
	"bytes"
	"fmt"
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

// FuzzTrimDataplaneSpec: a trimmed spec parses to the same tags and the same
// errors as the whole one, and trimming twice changes nothing more.
func FuzzTrimDataplaneSpec(f *testing.F) {
	f.Add([]byte(`{"networking":{"address":"10.0.0.1","inbound":[{"port":8080,"servicePort":80,"tags":{"kuma.io/service":"web","version":"v1"},"health":{"ready":true}}],"gateway":{"type":"BUILTIN","tags":{"kuma.io/service":"gw"}},"admin":{"port":9901},"transparentProxying":{"redirectPortInbound":15006}},"probes":{"port":9000}}`))
	f.Add([]byte(`{"networking":{"inbound":[null,1,{"tags":{"a":1}},{"tags":null}],"gateway":[]}}`))
	f.Add([]byte(`{"networking":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		trimmed := TrimDataplaneSpec(raw)
		tags, errs := ParseDataplaneTags(raw)
		trimmedTags, trimmedErrs := ParseDataplaneTags(trimmed)
		if !reflect.DeepEqual(tags, trimmedTags) || fmt.Sprint(errs) != fmt.Sprint(trimmedErrs) {
			t.Fatalf("trimmed %s to %s: tags %v, errors %v; whole: tags %v, errors %v", raw, trimmed, trimmedTags, trimmedErrs, tags, errs)
		}
		if again := TrimDataplaneSpec(trimmed); !bytes.Equal(again, trimmed) {
			t.Fatalf("trimming %s again gave %s", trimmed, again)
		}
	})
}
