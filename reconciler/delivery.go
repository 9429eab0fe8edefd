package reconciler

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"net/url"
	"slices"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
)

// renewalFraction is the part of a certificate's lifetime after which Kuma
// renews it; renewalJitter spreads renewals over this much more, earlier.
const (
	renewalFraction = 0.8
	renewalJitter   = 0.1
)

// delivered is what a valid Secret holds.
type delivered struct {
	leaf    *x509.Certificate
	renewAt time.Time
}

// checkDelivered tells whether a delivered Secret still serves the plan: the
// same identity and issuer, a key that matches the certificate, a chain to
// its ca.crt, and no renewal due. It returns why not, or the certificate.
// It is pure, so a resync that finds everything in order writes nothing.
func checkDelivered(s *corev1.Secret, p *plan, now time.Time) (*delivered, string) {
	if s == nil {
		return nil, "no Secret yet"
	}
	switch {
	case s.Annotations[IdentityHashAnnotation] != p.identityHash:
		return nil, "the identity changed"
	case s.Annotations[IssuerHashAnnotation] != p.issuerHash:
		return nil, "the backend changed"
	}
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		return nil, "tls.crt is not a certificate chain"
	}
	leaf := chain[0]
	key, err := pki.DecodePrivateKeyBytes(s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, "tls.key is not a private key"
	}
	if ok, err := pki.PublicKeyMatchesCertificate(key.Public(), leaf); err != nil || !ok {
		return nil, "tls.key does not match tls.crt"
	}
	if !sameURIs(leaf.URIs, p.uris) {
		return nil, "the certificate's URI SANs are not the dataplane's identity"
	}
	if p.trust != nil && !bytes.Equal(s.Data[CAKey], p.trust) {
		return nil, "ca.crt is not the backend's CA"
	}
	if err := verifyChain(chain, s.Data[CAKey], now); err != nil {
		return nil, "the certificate does not verify against ca.crt: " + err.Error()
	}
	renewAt := renewalTime(leaf, p.jitterSeed())
	if !now.Before(renewAt) {
		return nil, "renewal is due"
	}
	return &delivered{leaf: leaf, renewAt: renewAt}, ""
}

// verifyChain checks that chain[0] verifies against the roots in caPEM, with
// chain[1:] as intermediates.
func verifyChain(chain []*x509.Certificate, caPEM []byte, now time.Time) error {
	roots, err := pki.DecodeX509CertificateSetBytes(caPEM)
	if err != nil {
		return err
	}
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	for _, r := range roots {
		opts.Roots.AddCert(r)
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err = chain[0].Verify(opts)
	return err
}

// renewalTime is when a certificate is renewed: once 4/5 of its lifetime has
// passed, as Kuma does, brought forward by a jitter of up to a tenth of the
// lifetime. The jitter is derived from seed, so it is stable across restarts
// and resyncs, yet certificates issued together renew apart.
func renewalTime(leaf *x509.Certificate, seed string) time.Time {
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	sum := sha256.Sum256([]byte(seed + "/" + leaf.SerialNumber.String()))
	jitter := float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53) // uniform in [0, 1)
	return leaf.NotBefore.Add(time.Duration(float64(lifetime) * (renewalFraction - renewalJitter*jitter)))
}

func sameURIs(a, b []*url.URL) bool {
	return slices.EqualFunc(a, b, func(x, y *url.URL) bool { return x.String() == y.String() })
}
