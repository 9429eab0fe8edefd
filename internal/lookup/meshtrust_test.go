package lookup

import (
	"testing"
	"time"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

func TestMeshTrustRoots(t *testing.T) {
	now := time.Now()
	a, b := testpki.NewCA(t, "a", now), testpki.NewCA(t, "b", now)
	pem := func(s string) kuma.CABundle { return kuma.CABundle{Type: "Pem", PEM: &kuma.PEM{Value: s}} }
	tests := map[string]struct {
		bundles []kuma.CABundle
		want    []string
	}{
		"one bundle":                   {bundles: []kuma.CABundle{pem(string(a.PEM))}, want: []string{"CN=a"}},
		"bundles joined, in order":     {bundles: []kuma.CABundle{pem(string(b.PEM)), pem(string(a.PEM))}, want: []string{"CN=b", "CN=a"}},
		"two roots in one bundle":      {bundles: []kuma.CABundle{pem(string(a.PEM) + string(b.PEM))}, want: []string{"CN=a", "CN=b"}},
		"a bundle that does not parse": {bundles: []kuma.CABundle{pem("not PEM"), pem(string(b.PEM))}, want: []string{"CN=b"}},
		"a bundle without pem":         {bundles: []kuma.CABundle{{Type: "Pem"}}},
		"no bundles":                   {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, c := range MeshTrustRoots(&kuma.MeshTrustResource{Spec: kuma.MeshTrustSpec{CABundles: tc.bundles}}) {
				got = append(got, c.Subject.String())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("roots %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("roots %v, want %v", got, tc.want)
				}
			}
		})
	}
}
