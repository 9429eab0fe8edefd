package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"maps"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshcert/meshcert/internal/testpki"
)

func TestX509SVIDResponse(t *testing.T) {
	s, id, ca := newTestServer(t)
	svid := s.SVIDs.Get(webID)
	bundles, err := s.bundlesFor(context.Background(), svid)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := x509SVIDResponse(svid, bundles)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 1 {
		t.Fatalf("%d SVIDs, want 1", len(resp.Svids))
	}
	got := resp.Svids[0]
	if got.SpiffeId != id.SpiffeID {
		t.Errorf("SPIFFE ID %q, want %q", got.SpiffeId, id.SpiffeID)
	}
	chain, err := x509.ParseCertificates(got.X509Svid)
	if err != nil || len(chain) != len(svid.Certificates) || !chain[0].Equal(svid.Leaf()) {
		t.Errorf("X509Svid is not the SVID's chain in DER (%v)", err)
	}
	if want, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey); err != nil || !bytes.Equal(got.X509SvidKey, want) {
		t.Errorf("X509SvidKey is not the SVID's key in PKCS#8 (%v)", err)
	}
	if !bytes.Equal(got.Bundle, ca.Cert.Raw) {
		t.Error("the SVID's bundle is not its own root")
	}
	if fed := slices.Sorted(maps.Keys(resp.FederatedBundles)); !slices.Equal(fed, []string{"spiffe://builtin.payments.example.com"}) {
		t.Errorf("federated bundles %v, want the other trust domain's", fed)
	}
}

func TestWithOwn(t *testing.T) {
	s, _, ca := newTestServer(t)
	svid := s.SVIDs.Get(webID)
	other := testpki.NewCA(t, "other CA", svid.Leaf().NotBefore)
	own, builtin := spiffeid.RequireTrustDomainFromString("payments.example.com"), spiffeid.RequireTrustDomainFromString("builtin.payments.example.com")
	tests := map[string]struct {
		bundles []*x509bundle.Bundle
		// want are each trust domain's roots, in order.
		want map[spiffeid.TrustDomain][]*x509.Certificate
	}{
		"no MeshTrust of its trust domain: its own root is added, in order": {
			bundles: []*x509bundle.Bundle{x509bundle.FromX509Authorities(builtin, []*x509.Certificate{other.Cert})},
			want:    map[spiffeid.TrustDomain][]*x509.Certificate{builtin: {other.Cert}, own: {ca.Cert}},
		},
		"a MeshTrust of its trust domain without roots: its own root": {
			bundles: []*x509bundle.Bundle{x509bundle.New(own)},
			want:    map[spiffeid.TrustDomain][]*x509.Certificate{own: {ca.Cert}},
		},
		"a MeshTrust of its trust domain with roots: those": {
			bundles: []*x509bundle.Bundle{x509bundle.FromX509Authorities(own, []*x509.Certificate{other.Cert})},
			want:    map[spiffeid.TrustDomain][]*x509.Certificate{own: {other.Cert}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			given := make([]*x509bundle.Bundle, len(tc.bundles))
			for i, b := range tc.bundles {
				given[i] = b.Clone()
			}
			got := withOwn(slices.Clone(tc.bundles), svid)
			if len(got) != len(tc.want) {
				t.Fatalf("%d bundles, want %d", len(got), len(tc.want))
			}
			for i, b := range got {
				if i > 0 && got[i-1].TrustDomain().Compare(b.TrustDomain()) >= 0 {
					t.Errorf("bundles not sorted by trust domain")
				}
				if !slices.EqualFunc(b.X509Authorities(), tc.want[b.TrustDomain()], (*x509.Certificate).Equal) {
					t.Errorf("%s: roots %v, want %v", b.TrustDomain(), subjects(b.X509Authorities()), subjects(tc.want[b.TrustDomain()]))
				}
			}
			// The bundles given are shared by every connection of the mesh.
			for i, b := range tc.bundles {
				if !b.Equal(given[i]) {
					t.Errorf("the bundle of %s given was changed", b.TrustDomain())
				}
			}
		})
	}
}
