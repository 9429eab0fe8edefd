package dataplane

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/internal/trust"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func TestCheckDelivered(t *testing.T) {
	ca, otherCA := testpki.NewCA(t, "ca", now), testpki.NewCA(t, "other", now)
	uris := testpki.URLs("spiffe://demo/web", "kuma://kuma.io/service/web")
	p := &plan{dataplane: types.NamespacedName{Namespace: "ns", Name: "web"}, uris: uris, identityHash: "id", issuerHash: "iss", keyAlgorithm: issuance.ECDSAP256}
	key, otherKey := testpki.Key(t), testpki.Key(t)
	keyPEM, _ := pki.EncodePrivateKey(key, cmapi.PKCS8)
	otherKeyPEM, _ := pki.EncodePrivateKey(otherKey, cmapi.PKCS8)
	issuedAt := now.Add(-time.Hour)
	good := func() *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kuma.IdentityHashAnnotation: "id", kuma.IssuerHashAnnotation: "iss"}},
			Data: map[string][]byte{
				corev1.TLSCertKey:       ca.Issue(t, key, uris, issuedAt, 10*time.Hour),
				corev1.TLSPrivateKeyKey: keyPEM,
				kuma.CAKey:              ca.PEM,
			},
		}
	}
	bothRoots := trust.EncodeRoots([]*x509.Certificate{ca.Cert, otherCA.Cert})
	tests := map[string]struct {
		secret    func() *corev1.Secret
		plan      func(*plan)
		now       time.Time
		wantWhy   string
		usable    bool
		wantStale bool
	}{
		"in order":              {secret: good},
		"no Secret":             {secret: func() *corev1.Secret { return nil }, wantWhy: "no Secret yet"},
		"identity changed":      {secret: good, plan: func(p *plan) { p.identityHash = "other" }, wantWhy: "the identity changed", usable: true},
		"backend changed":       {secret: good, plan: func(p *plan) { p.issuerHash = "other" }, wantWhy: reasonBackendChanged, usable: true},
		"key algorithm changed": {secret: good, plan: func(p *plan) { p.keyAlgorithm = issuance.Ed25519 }, wantWhy: "the key algorithm changed", usable: true},
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
				s.Data[corev1.TLSCertKey] = ca.Issue(t, key, testpki.URLs("spiffe://demo/admin"), issuedAt, 10*time.Hour)
				return s
			},
			wantWhy: "the identity changed",
			usable:  true,
		},
		"ca.crt replaced": {
			secret:  func() *corev1.Secret { s := good(); s.Data[kuma.CAKey] = otherCA.PEM; return s },
			wantWhy: "the certificate does not verify against ca.crt",
		},
		"a root added to the mesh: ca.crt only": {
			secret:    good,
			plan:      func(p *plan) { p.bundle, p.bundleComplete = bothRoots, true },
			wantStale: true,
		},
		"a root still being learned: wait": {
			secret: good,
			plan:   func(p *plan) { p.bundle, p.bundleComplete = otherCA.PEM, false },
		},
		"the issuing root left the mesh": {
			secret:  good,
			plan:    func(p *plan) { p.bundle, p.bundleComplete = otherCA.PEM, true },
			wantWhy: "the certificate does not verify against the mesh's roots",
			usable:  true,
		},
		"renewal due at 4/5 of the lifetime": {secret: good, now: issuedAt.Add(8 * time.Hour), wantWhy: "renewal is due", usable: true},
		"expired":                            {secret: good, now: issuedAt.Add(11 * time.Hour), wantWhy: "the certificate does not verify against ca.crt"},
	}
	// Each case is judged as the API server holds the Secret and as the
	// cache holds it, compacted and without its key: the same verdict.
	for name, tc := range tests {
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, cached %v", name, cached), func(t *testing.T) {
				s := tc.secret()
				if s != nil && cached {
					s.Type, s.Labels = corev1.SecretTypeTLS, map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue}
					(&SecretCompactor{}).Compact(s)
				}
				pl := *p
				pl.bundle, pl.bundleComplete = ca.PEM, true
				if tc.plan != nil {
					tc.plan(&pl)
				}
				at := now
				if !tc.now.IsZero() {
					at = tc.now
				}
				v := checkDelivered(s, &pl, at)
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
}
