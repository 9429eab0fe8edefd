package agent

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

const webID = "spiffe://payments.example.com/ns/pay/sa/web"

// newTestServer is a Server whose identity web holds a certificate of ca,
// in a mesh with a second trust domain from another MeshTrust.
func newTestServer(t testing.TB) (*Server, *Identity, testpki.CA) {
	t.Helper()
	now := time.Now()
	ca := testpki.NewCA(t, "payments CA", now)
	other := testpki.NewCA(t, "builtin CA", now)
	key := testpki.Key(t)
	chainPEM := ca.Issue(t, key, testpki.URLs(webID), now.Add(-time.Minute), time.Hour)
	chain, err := pki.DecodeX509CertificateChainBytes(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := kuma.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	trust := &kuma.MeshTrustResource{
		ObjectMeta: metav1.ObjectMeta{Name: "builtin", Namespace: "kong-mesh-system", Labels: map[string]string{"kuma.io/mesh": "payments"}},
		Spec: kuma.MeshTrustSpec{TrustDomain: "builtin.payments.example.com", CABundles: []kuma.CABundle{
			{Type: "Pem", PEM: &kuma.PEM{Value: string(other.PEM)}},
		}},
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(trust).Build()
	id := &Identity{SpiffeID: webID, TrustDomain: "payments.example.com", Mesh: "payments"}
	svids := &SVIDs{ids: map[string]*wanted{}, clock: clock.RealClock{}, wake: make(chan event.TypedGenericEvent[string], 16)}
	svid, err := newSVID(id, spiffeid.RequireFromString(webID), &issuance.Certificate{ChainPEM: chainPEM, Chain: chain, Key: key, Root: ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	svids.ids[webID] = &wanted{identity: id, users: 1, svid: svid}
	return &Server{SVIDs: svids, Bundles: &Bundles{Cache: c, SystemNamespace: "kong-mesh-system"}, Updates: NewUpdates()}, id, ca
}

func TestSDSResources(t *testing.T) {
	tests := map[string]struct {
		names    []string
		want     []string // the names of the secrets served, in order
		refused  string
		ready    bool
		noSVIDOf bool
	}{
		"its SPIFFE ID":          {names: []string{webID}, want: []string{webID}, ready: true},
		"default and ROOTCA":     {names: []string{"default", "ROOTCA"}, want: []string{"default", "ROOTCA"}, ready: true},
		"ALL and a trust domain": {names: []string{"ALL", "spiffe://builtin.payments.example.com"}, want: []string{"ALL", "spiffe://builtin.payments.example.com"}, ready: true},
		"no names is everything": {want: []string{webID, "ALL", "spiffe://builtin.payments.example.com", "spiffe://payments.example.com"}, ready: true},
		"another workload's identity": {
			names: []string{webID, "spiffe://payments.example.com/ns/pay/sa/db"}, refused: `["spiffe://payments.example.com/ns/pay/sa/db"]`,
		},
		"a trust domain of no MeshTrust of the mesh": {names: []string{"spiffe://elsewhere.example.com"}, refused: "spiffe://elsewhere.example.com"},
		"before its certificate exists":              {names: []string{webID}, noSVIDOf: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, id, ca := newTestServer(t)
			if tc.noSVIDOf {
				s.SVIDs.ids[webID].svid = nil
			}
			got, ready, err := (&sds{s: s}).resources(context.Background(), id, tc.names)
			if tc.refused != "" {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("err = %v, want InvalidArgument naming %s", err, tc.refused)
				}
				return
			}
			if err != nil || ready != tc.ready {
				t.Fatalf("ready %v, err %v; want ready %v", ready, err, tc.ready)
			}
			if !ready {
				if len(got) > 0 {
					t.Errorf("%d secrets before the certificate exists", len(got))
				}
				return
			}
			var names []string
			for _, a := range got {
				secret := &tlsv3.Secret{}
				if err := a.UnmarshalTo(secret); err != nil {
					t.Fatal(err)
				}
				names = append(names, secret.Name)
				switch secret.Name {
				case webID, "default":
					if secret.GetTlsCertificate().GetPrivateKey().GetInlineBytes() == nil {
						t.Errorf("%s has no key", secret.Name)
					}
				case "ROOTCA", "spiffe://payments.example.com":
					roots, err := pki.DecodeX509CertificateSetBytes(secret.GetValidationContext().GetTrustedCa().GetInlineBytes())
					if err != nil || len(roots) != 1 || !roots[0].Equal(ca.Cert) {
						t.Errorf("%s trusts %v (%v), want the identity's own root", secret.Name, subjects(roots), err)
					}
				case "ALL":
					conf := &tlsv3.SPIFFECertValidatorConfig{}
					v := secret.GetValidationContext().GetCustomValidatorConfig()
					if v.GetName() != SPIFFEValidatorKey || v.GetTypedConfig().UnmarshalTo(conf) != nil || len(conf.TrustDomains) != 2 ||
						conf.TrustDomains[0].Name != "builtin.payments.example.com" || conf.TrustDomains[1].Name != "payments.example.com" {
						t.Errorf("ALL is %v", v)
					}
				}
			}
			if strings.Join(names, " ") != strings.Join(tc.want, " ") {
				t.Errorf("served %v, want %v", names, tc.want)
			}
		})
	}
}

func TestAnExpiredCertificateIsNeverServed(t *testing.T) {
	s, id, _ := newTestServer(t)
	leaf := s.SVIDs.ids[webID].svid.Leaf()
	for name, tc := range map[string]struct {
		at    time.Time
		ready bool
	}{
		"while valid":      {at: leaf.NotAfter.Add(-time.Second), ready: true},
		"at its expiry":    {at: leaf.NotAfter},
		"after its expiry": {at: leaf.NotAfter.Add(time.Hour)},
	} {
		t.Run(name, func(t *testing.T) {
			s.SVIDs.clock = clocktesting.NewFakePassiveClock(tc.at)
			if got := s.SVIDs.Get(webID) != nil; got != tc.ready {
				t.Errorf("served: %v, want %v", got, tc.ready)
			}
			if _, ready, err := (&sds{s: s}).resources(context.Background(), id, []string{webID}); err != nil || ready != tc.ready {
				t.Errorf("SDS ready %v (%v), want %v", ready, err, tc.ready)
			}
		})
	}
}

func subjects(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.String())
	}
	return out
}

// FuzzSDSResourceNames: whatever names a workload asks for, it gets secrets
// of its own entitlement only, and a name outside it is refused.
func FuzzSDSResourceNames(f *testing.F) {
	for _, seed := range []string{webID, "ALL\nROOTCA\ndefault", "spiffe://builtin.payments.example.com", "", "spiffe://payments.example.com/ns/pay/sa/db", "ALL\n\nALL", "\x00"} {
		f.Add(seed)
	}
	entitled := map[string]bool{webID: true, "default": true, "ROOTCA": true, "ALL": true,
		"spiffe://payments.example.com": true, "spiffe://builtin.payments.example.com": true}
	s, id, _ := newTestServer(f)
	f.Fuzz(func(t *testing.T, joined string) {
		var names []string
		if joined != "" {
			names = strings.Split(joined, "\n")
		}
		outside := false
		for _, n := range names {
			outside = outside || !entitled[n]
		}
		got, ready, err := (&sds{s: s}).resources(context.Background(), id, names)
		if outside {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("names %q outside the entitlement: err %v", names, err)
			}
			return
		}
		if err != nil || !ready {
			t.Fatalf("names %q: ready %v, err %v", names, ready, err)
		}
		for _, a := range got {
			secret := &tlsv3.Secret{}
			if err := a.UnmarshalTo(secret); err != nil {
				t.Fatal(err)
			}
			if !entitled[secret.Name] {
				t.Fatalf("served %q, outside the entitlement", secret.Name)
			}
		}
	})
}
