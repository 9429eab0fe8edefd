package issuance

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"net/url"
	"slices"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/kuma"
)

// VerifyChain verifies chain[0] against the roots in caPEM, with chain[1:]
// as intermediates, at now, and returns the root it chains to.
func VerifyChain(chain []*x509.Certificate, caPEM []byte, now time.Time) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("no certificate")
	}
	roots, err := pki.DecodeX509CertificateSetBytes(caPEM)
	if err != nil {
		return nil, err
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
	chains, err := chain[0].Verify(opts)
	if err != nil {
		return nil, err
	}
	if len(chains) == 0 {
		return nil, errors.New("no chain")
	}
	return chains[0][len(chains[0])-1], nil
}

// SameURIs tells whether two lists of URIs are equal, in order.
func SameURIs(a, b []*url.URL) bool {
	return slices.EqualFunc(a, b, func(x, y *url.URL) bool { return x.String() == y.String() })
}

// renewalFraction is the part of a certificate's lifetime after which Kuma
// renews it; renewalJitter spreads renewals over this much more, earlier.
const (
	renewalFraction = 0.8
	renewalJitter   = 0.1
)

// RenewalTime is when a certificate is renewed: once 4/5 of its lifetime has
// passed, as Kuma does, brought forward by a jitter of up to a tenth of the
// lifetime. The jitter is derived from seed, so it is stable across restarts
// and resyncs, yet certificates issued together renew apart.
func RenewalTime(leaf *x509.Certificate, seed string) time.Time {
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(lifetime) * (renewalFraction - renewalJitter*Spread(seed, leaf.SerialNumber.String()))))
}

// Spread maps its parts to a stable number in [0, 1), to spread work apart.
func Spread(parts ...string) float64 {
	d := kuma.Digest(parts...)
	return float64(binary.BigEndian.Uint64(d[:8])>>11) / (1 << 53)
}
