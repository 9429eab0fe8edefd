package lookup

import (
	"crypto/x509"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/kuma"
)

// MeshTrustRoots are the roots a MeshTrust holds. A bundle that does not
// parse adds nothing: it is the webhook's and Kuma's to reject.
func MeshTrustRoots(mt *kuma.MeshTrustResource) []*x509.Certificate {
	var roots []*x509.Certificate
	for _, b := range mt.Spec.CABundles {
		if b.PEM == nil {
			continue
		}
		if certs, err := pki.DecodeX509CertificateSetBytes([]byte(b.PEM.Value)); err == nil {
			roots = append(roots, certs...)
		}
	}
	return roots
}
