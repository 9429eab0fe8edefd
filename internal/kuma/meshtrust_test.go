package kuma

import (
	"testing"
	"time"

	"github.com/meshcert/meshcert/internal/testpki"
)

func TestMeshTrustRoots(t *testing.T) {
	now := time.Now()
	a, b := testpki.NewCA(t, "a", now), testpki.NewCA(t, "b", now)
	pem := func(s string) CABundle { return CABundle{Type: "Pem", PEM: &PEM{Value: s}} }
	tests := map[string]struct {
		bundles []CABundle
		want    []string
	}{
		"one bundle":                   {bundles: []CABundle{pem(string(a.PEM))}, want: []string{"CN=a"}},
		"bundles joined, in order":     {bundles: []CABundle{pem(string(b.PEM)), pem(string(a.PEM))}, want: []string{"CN=b", "CN=a"}},
		"two roots in one bundle":      {bundles: []CABundle{pem(string(a.PEM) + string(b.PEM))}, want: []string{"CN=a", "CN=b"}},
		"a bundle that does not parse": {bundles: []CABundle{pem("not PEM"), pem(string(b.PEM))}, want: []string{"CN=b"}},
		"a bundle without pem":         {bundles: []CABundle{{Type: "Pem"}}},
		"no bundles":                   {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, c := range (&MeshTrustResource{Spec: MeshTrustSpec{CABundles: tc.bundles}}).Roots() {
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
