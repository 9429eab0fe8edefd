package references

import (
	"testing"
	"time"

	"github.com/meshcert/meshcert/model"
	"github.com/meshcert/meshcert/test/testpki"
)

func TestMeshTrustRoots(t *testing.T) {
	now := time.Now()
	a, b := testpki.NewCA(t, "a", now), testpki.NewCA(t, "b", now)
	pem := func(s string) model.CABundle { return model.CABundle{Type: "Pem", PEM: &model.PEM{Value: s}} }
	tests := map[string]struct {
		bundles []model.CABundle
		want    []string
	}{
		"one bundle":                   {bundles: []model.CABundle{pem(string(a.PEM))}, want: []string{"CN=a"}},
		"bundles joined, in order":     {bundles: []model.CABundle{pem(string(b.PEM)), pem(string(a.PEM))}, want: []string{"CN=b", "CN=a"}},
		"two roots in one bundle":      {bundles: []model.CABundle{pem(string(a.PEM) + string(b.PEM))}, want: []string{"CN=a", "CN=b"}},
		"a bundle that does not parse": {bundles: []model.CABundle{pem("not PEM"), pem(string(b.PEM))}, want: []string{"CN=b"}},
		"a bundle without pem":         {bundles: []model.CABundle{{Type: "Pem"}}},
		"no bundles":                   {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, c := range MeshTrustRoots(&model.MeshTrustResource{Spec: model.MeshTrustSpec{CABundles: tc.bundles}}) {
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
