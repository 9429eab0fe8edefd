package dataplane

import (
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/trust"
)

// meshRoots are what the mesh's trust bundle is made of, now.
func (r *Reconciler) meshRoots(mesh string, spec kuma.MeshSpec) trust.MeshRoots {
	return r.roots.Of(mesh, spec, r.env())
}

// learnFromSecret learns the enabled backend's root from a certificate it
// delivered: the root its chain verifies to. After a restart this recovers
// the root without asking the issuer again.
func (r *Reconciler) learnFromSecret(p *plan, s *corev1.Secret) {
	if p.caCert != nil || s == nil || s.Annotations[kuma.IssuerHashAnnotation] != p.issuerHash {
		return
	}
	if _, _, ok := r.roots.Roots(p.enabledKey); ok {
		return
	}
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		return
	}
	if root, err := issuance.VerifyChain(chain, s.Data[kuma.CAKey], r.Clock.Now()); err == nil {
		r.roots.Learn(p.enabledKey, r.Clock.Now(), root)
	}
}
