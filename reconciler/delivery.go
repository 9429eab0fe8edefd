package reconciler

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"net/url"
	"slices"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/model"
)

// renewalFraction is the part of a certificate's lifetime after which Kuma
// renews it; renewalJitter spreads renewals over this much more, earlier.
const (
	renewalFraction = 0.8
	renewalJitter   = 0.1
)

// reasonBackendChanged is why a certificate is reissued when the enabled
// backend changes; such reissues are spread over the switch window.
const reasonBackendChanged = "the backend changed"

// verdict is what a delivered Secret needs.
type verdict struct {
	leaf    *x509.Certificate
	renewAt time.Time
	// reissue says why a new certificate is needed; empty when none is.
	reissue string
	// usable means the current certificate still serves: its key matches and
	// it verifies against its ca.crt, so a reissue may wait its turn.
	usable bool
	// staleBundle means only ca.crt needs rewriting: the mesh's roots changed.
	staleBundle bool
}

// checkDelivered judges a delivered Secret against the plan. It is pure, so a
// resync that finds everything in order writes nothing.
func checkDelivered(s *corev1.Secret, p *plan, now time.Time) verdict {
	if s == nil {
		return verdict{reissue: "no Secret yet"}
	}
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		return verdict{reissue: "tls.crt is not a certificate chain"}
	}
	leaf := chain[0]
	key, err := pki.DecodePrivateKeyBytes(s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return verdict{reissue: "tls.key is not a private key"}
	}
	if ok, err := pki.PublicKeyMatchesCertificate(key.Public(), leaf); err != nil || !ok {
		return verdict{reissue: "tls.key does not match tls.crt"}
	}
	if _, err := verifiedRoot(chain, s.Data[model.CAKey], now); err != nil {
		return verdict{reissue: "the certificate does not verify against ca.crt: " + err.Error()}
	}
	v := verdict{leaf: leaf, usable: true, renewAt: renewalTime(leaf, p.jitterSeed())}
	switch {
	case s.Annotations[model.IdentityHashAnnotation] != p.identityHash || !sameURIs(leaf.URIs, p.uris):
		v.reissue = "the identity changed"
	case s.Annotations[model.IssuerHashAnnotation] != p.issuerHash:
		v.reissue = reasonBackendChanged
	case !now.Before(v.renewAt):
		v.reissue = "renewal is due"
	case p.bundleComplete && !bytes.Equal(s.Data[model.CAKey], p.bundle):
		if _, err := verifiedRoot(chain, p.bundle, now); err != nil {
			v.reissue = "the certificate does not verify against the mesh's roots"
		} else {
			v.staleBundle = true
		}
	}
	return v
}

// verifiedRoot verifies chain[0] against the roots in caPEM, with chain[1:]
// as intermediates, and returns the root it chains to.
func verifiedRoot(chain []*x509.Certificate, caPEM []byte, now time.Time) (*x509.Certificate, error) {
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

// renewalTime is when a certificate is renewed: once 4/5 of its lifetime has
// passed, as Kuma does, brought forward by a jitter of up to a tenth of the
// lifetime. The jitter is derived from seed, so it is stable across restarts
// and resyncs, yet certificates issued together renew apart.
func renewalTime(leaf *x509.Certificate, seed string) time.Time {
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(lifetime) * (renewalFraction - renewalJitter*unitFraction(seed, leaf.SerialNumber.String()))))
}

// unitFraction maps its parts to a stable number in [0, 1).
func unitFraction(parts ...string) float64 {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return float64(binary.BigEndian.Uint64(h.Sum(nil)[:8])>>11) / (1 << 53)
}

func sameURIs(a, b []*url.URL) bool {
	return slices.EqualFunc(a, b, func(x, y *url.URL) bool { return x.String() == y.String() })
}
