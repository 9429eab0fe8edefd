package dataplane

import (
	"bytes"
	"crypto/x509"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
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
	algorithm, problem := deliveredKey(s, leaf)
	if problem != "" {
		return verdict{reissue: problem}
	}
	if _, err := issuance.VerifyChain(chain, s.Data[kuma.CAKey], now); err != nil {
		return verdict{reissue: "the certificate does not verify against ca.crt: " + err.Error()}
	}
	v := verdict{leaf: leaf, usable: true, renewAt: issuance.RenewalTime(leaf, p.jitterSeed())}
	switch {
	case s.Annotations[kuma.IdentityHashAnnotation] != p.identityHash || !issuance.SameURIs(leaf.URIs, p.uris):
		v.reissue = "the identity changed"
	case s.Annotations[kuma.IssuerHashAnnotation] != p.issuerHash:
		v.reissue = reasonBackendChanged
	case algorithm != p.keyAlgorithm:
		v.reissue = "the key algorithm changed"
	case !now.Before(v.renewAt):
		v.reissue = "renewal is due"
	case p.bundleComplete && !bytes.Equal(s.Data[kuma.CAKey], p.bundle):
		if _, err := issuance.VerifyChain(chain, p.bundle, now); err != nil {
			v.reissue = "the certificate does not verify against the mesh's roots"
		} else {
			v.staleBundle = true
		}
	}
	return v
}
