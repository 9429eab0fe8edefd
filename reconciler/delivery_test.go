package reconciler

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/model"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

type testCA struct {
	cert *x509.Certificate
	pem  []byte
	key  crypto.Signer
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	key, err := generateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf for key with the URIs, valid from notBefore for lifetime.
func (ca testCA) issue(t *testing.T, key crypto.Signer, uris []*url.URL, notBefore time.Time, lifetime time.Duration) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(notBefore.UnixNano()), URIs: uris, NotBefore: notBefore, NotAfter: notBefore.Add(lifetime),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func mustURLs(raw ...string) []*url.URL {
	var out []*url.URL
	for _, r := range raw {
		u, _ := url.Parse(r)
		out = append(out, u)
	}
	return out
}

func TestCheckDelivered(t *testing.T) {
	ca, otherCA := newTestCA(t), newTestCA(t)
	uris := mustURLs("spiffe://demo/web", "kuma://kuma.io/service/web")
	p := &plan{dataplane: types.NamespacedName{Namespace: "ns", Name: "web"}, uris: uris, identityHash: "id", issuerHash: "iss"}
	key, _ := generateKey(ECDSAP256)
	otherKey, _ := generateKey(ECDSAP256)
	keyPEM, _ := pki.EncodePrivateKey(key, cmapi.PKCS8)
	otherKeyPEM, _ := pki.EncodePrivateKey(otherKey, cmapi.PKCS8)
	issuedAt := now.Add(-time.Hour)
	good := func() *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{model.IdentityHashAnnotation: "id", model.IssuerHashAnnotation: "iss"}},
			Data: map[string][]byte{
				corev1.TLSCertKey:       ca.issue(t, key, uris, issuedAt, 10*time.Hour),
				corev1.TLSPrivateKeyKey: keyPEM,
				model.CAKey:             ca.pem,
			},
		}
	}
	bothRoots := encodeRoots([]*x509.Certificate{ca.cert, otherCA.cert})
	tests := map[string]struct {
		secret    func() *corev1.Secret
		plan      func(*plan)
		now       time.Time
		wantWhy   string
		usable    bool
		wantStale bool
	}{
		"in order":         {secret: good},
		"no Secret":        {secret: func() *corev1.Secret { return nil }, wantWhy: "no Secret yet"},
		"identity changed": {secret: good, plan: func(p *plan) { p.identityHash = "other" }, wantWhy: "the identity changed", usable: true},
		"backend changed":  {secret: good, plan: func(p *plan) { p.issuerHash = "other" }, wantWhy: reasonBackendChanged, usable: true},
		"certificate unreadable": {
			secret:  func() *corev1.Secret { s := good(); s.Data[corev1.TLSCertKey] = []byte("junk"); return s },
			wantWhy: "tls.crt is not a certificate chain",
		},
		"key unreadable": {
			secret:  func() *corev1.Secret { s := good(); s.Data[corev1.TLSPrivateKeyKey] = nil; return s },
			wantWhy: "tls.key is not a private key",
		},
		"key of another certificate": {
			secret:  func() *corev1.Secret { s := good(); s.Data[corev1.TLSPrivateKeyKey] = otherKeyPEM; return s },
			wantWhy: "tls.key does not match tls.crt",
		},
		"SANs tampered with, annotations not": {
			secret: func() *corev1.Secret {
				s := good()
				s.Data[corev1.TLSCertKey] = ca.issue(t, key, mustURLs("spiffe://demo/admin"), issuedAt, 10*time.Hour)
				return s
			},
			wantWhy: "the identity changed",
			usable:  true,
		},
		"ca.crt replaced": {
			secret:  func() *corev1.Secret { s := good(); s.Data[model.CAKey] = otherCA.pem; return s },
			wantWhy: "the certificate does not verify against ca.crt",
		},
		"a root added to the mesh: ca.crt only": {
			secret:    good,
			plan:      func(p *plan) { p.bundle, p.bundleComplete = bothRoots, true },
			wantStale: true,
		},
		"a root still being learned: wait": {
			secret: good,
			plan:   func(p *plan) { p.bundle, p.bundleComplete = otherCA.pem, false },
		},
		"the issuing root left the mesh": {
			secret:  good,
			plan:    func(p *plan) { p.bundle, p.bundleComplete = otherCA.pem, true },
			wantWhy: "the certificate does not verify against the mesh's roots",
			usable:  true,
		},
		"renewal due at 4/5 of the lifetime": {secret: good, now: issuedAt.Add(8 * time.Hour), wantWhy: "renewal is due", usable: true},
		"expired":                            {secret: good, now: issuedAt.Add(11 * time.Hour), wantWhy: "the certificate does not verify against ca.crt"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pl := *p
			pl.bundle, pl.bundleComplete = ca.pem, true
			if tc.plan != nil {
				tc.plan(&pl)
			}
			at := now
			if !tc.now.IsZero() {
				at = tc.now
			}
			v := checkDelivered(tc.secret(), &pl, at)
			if !strings.HasPrefix(v.reissue, tc.wantWhy) || (tc.wantWhy == "") != (v.reissue == "") {
				t.Errorf("reissue = %q, want %q", v.reissue, tc.wantWhy)
			}
			if v.staleBundle != tc.wantStale {
				t.Errorf("staleBundle = %v, want %v", v.staleBundle, tc.wantStale)
			}
			if tc.wantWhy == "" {
				lifetime := v.leaf.NotAfter.Sub(v.leaf.NotBefore)
				if off := v.renewAt.Sub(v.leaf.NotBefore); off < lifetime*7/10 || off > lifetime*8/10 {
					t.Errorf("renews at %s of a %s lifetime, want between 7/10 and 8/10", off, lifetime)
				}
			} else if v.usable != tc.usable {
				t.Errorf("usable = %v, want %v", v.usable, tc.usable)
			}
		})
	}
}

func TestEncodeRootsIsStable(t *testing.T) {
	a, b := newTestCA(t), newTestCA(t)
	one := encodeRoots([]*x509.Certificate{a.cert, b.cert, a.cert})
	two := encodeRoots([]*x509.Certificate{b.cert, a.cert})
	if string(one) != string(two) {
		t.Error("the same roots in another order, or twice, give another bundle")
	}
	if certs, _ := pki.DecodeX509CertificateSetBytes(one); len(certs) != 2 {
		t.Errorf("%d certificates in the bundle, want 2", len(certs))
	}
}

func TestSwitchSpreadsAndReports(t *testing.T) {
	s := newSwitches(time.Minute)
	if !s.begin("demo", "ca-2", now, 20) || s.begin("demo", "ca-2", now, 20) {
		t.Fatal("begin must report only the first call")
	}
	var waits []time.Duration
	for i := range 20 {
		waits = append(waits, s.wait("demo", types.NamespacedName{Namespace: "ns", Name: "dp-" + string(rune('a'+i))}, now))
	}
	if slices.Min(waits) < 0 || slices.Max(waits) > time.Minute || slices.Max(waits)-slices.Min(waits) < 30*time.Second {
		t.Errorf("waits %v are not spread over the minute", waits)
	}
	reports := 0
	for i := range 20 {
		_, _, report, complete := s.progress("demo", "ca-2")
		if report {
			reports++
		}
		if complete != (i == 19) {
			t.Fatalf("complete at %d", i+1)
		}
	}
	if reports != 9 {
		t.Errorf("%d progress reports for 20 dataplanes, want one per tenth (9, then complete)", reports)
	}
	if s.wait("demo", types.NamespacedName{Name: "x"}, now) != 0 {
		t.Error("a finished switch still delays")
	}
}

func TestRenewalTimeSpreads(t *testing.T) {
	leaf := &x509.Certificate{SerialNumber: big.NewInt(42), NotBefore: now, NotAfter: now.Add(100 * time.Second)}
	if a, b := renewalTime(leaf, "ns/a"), renewalTime(leaf, "ns/a"); !a.Equal(b) {
		t.Fatalf("renewal time is not stable: %s, %s", a, b)
	}
	seen := map[time.Time]bool{}
	for i := range 1000 {
		at := renewalTime(leaf, "ns/dp-"+string(rune('a'+i%26))+big.NewInt(int64(i)).String())
		if off := at.Sub(now); off < 70*time.Second || off > 80*time.Second {
			t.Fatalf("renewal at %s, want within [70s, 80s]", off)
		}
		seen[at.Truncate(time.Second)] = true
	}
	if len(seen) < 9 {
		t.Errorf("1000 certificates issued together renew in only %d distinct seconds of 10", len(seen))
	}
}

func TestNames(t *testing.T) {
	long := strings.Repeat("a", 253)
	tests := map[string]struct {
		got     string
		wantMax int
	}{
		"secret of a short name":      {got: SecretName("web-1"), wantMax: 253},
		"secret of the longest name":  {got: SecretName(long), wantMax: 253},
		"request of the longest name": {got: requestName(types.NamespacedName{Namespace: strings.Repeat("n", 63), Name: long}, "a", "b", "c"), wantMax: 253},
		"label of a long name":        {got: labelValue(long), wantMax: 63},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if len(tc.got) > tc.wantMax {
				t.Errorf("%q is %d long, over %d", tc.got, len(tc.got), tc.wantMax)
			}
		})
	}
	if SecretName("web-1") != "web-1-mtls" {
		t.Errorf("SecretName(web-1) = %q", SecretName("web-1"))
	}
	dp := types.NamespacedName{Namespace: "ns", Name: "web"}
	if requestName(dp, "a", "b", "1") != requestName(dp, "a", "b", "1") {
		t.Error("request names are not deterministic")
	}
	if requestName(dp, "a", "b", "1") == requestName(dp, "a", "b", "2") {
		t.Error("a renewal reuses the request name")
	}
	if labelValue(long) == labelValue(long[1:]) {
		t.Error("shortened label values collide")
	}
}

func TestBackoff(t *testing.T) {
	f := newFailures(Backoff{Initial: time.Second, Max: 5 * time.Second})
	key := types.NamespacedName{Namespace: "ns", Name: "web"}
	var got []time.Duration
	for range 5 {
		got = append(got, f.record(key, "cause", now))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	if w := f.wait(key, "cause", now.Add(time.Second)); w != 4*time.Second {
		t.Errorf("wait = %s, want 4s", w)
	}
	if w := f.wait(key, "a fix", now); w != 0 {
		t.Errorf("a new cause still waits %s", w)
	}
	if d := f.record(key, "a fix", now); d != time.Second {
		t.Errorf("the backoff of a new cause starts at %s, want 1s", d)
	}
}

func TestCertificateRequestPEM(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSAP256, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			key, err := generateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			uris := mustURLs("spiffe://demo/web", "kuma://kuma.io/service/web")
			csrPEM, err := certificateRequestPEM(key, uris)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := pki.DecodeX509CertificateRequestBytes(csrPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !sameURIs(csr.URIs, uris) {
				t.Errorf("CSR URIs %v", csr.URIs)
			}
			// The CSR's key usages must be exactly the request's, or
			// cert-manager's webhook rejects it.
			tmpl, err := pki.CertificateTemplateFromCSRPEM(csrPEM)
			if err != nil {
				t.Fatal(err)
			}
			ku, eku, err := pki.KeyUsagesForCertificateOrCertificateRequest(usages, false)
			if err != nil {
				t.Fatal(err)
			}
			if tmpl.KeyUsage != ku || len(tmpl.ExtKeyUsage) != len(eku) {
				t.Errorf("CSR usages %v %v, want %v %v", tmpl.KeyUsage, tmpl.ExtKeyUsage, ku, eku)
			}
			if ok, _ := pki.PublicKeyMatchesCSR(key.Public(), csr); !ok {
				t.Error("the CSR is not for the key")
			}
		})
	}
	if _, err := generateKey("dsa"); err == nil {
		t.Error("an unknown algorithm made a key")
	}
}
