package issuance

import (
	"crypto"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"net/url"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
)

// KeyAlgorithm is the kind of private key generated for a certificate.
type KeyAlgorithm string

// The supported key algorithms. RSA 2048 matches Kuma's builtin CA; ECDSA
// P-256 is as strong and far cheaper to generate.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	RSA2048   KeyAlgorithm = "rsa-2048"
)

// usages are the key usages of a workload certificate: it is both the server
// and the client of mTLS.
var usages = []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment, cmapi.UsageServerAuth, cmapi.UsageClientAuth}

// generateKey makes a private key in-process. It is never logged, and never
// sent to the API server: only its CSR is.
func generateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case RSA2048:
		return pki.GenerateRSAPrivateKey(2048)
	case ECDSAP256:
		return pki.GenerateECPrivateKey(pki.ECCurve256)
	default:
		return nil, fmt.Errorf("unknown key algorithm %q", alg)
	}
}

// certificateRequestPEM encodes a CSR for the URI SANs, whose key usage
// extensions match usages exactly, as cert-manager's webhook requires.
func certificateRequestPEM(key crypto.Signer, uris []*url.URL) ([]byte, error) {
	spec := cmapi.CertificateSpec{Usages: usages, PrivateKey: &cmapi.CertificatePrivateKey{}}
	for _, u := range uris {
		spec.URIs = append(spec.URIs, u.String())
	}
	switch key.Public().(type) {
	case *rsa.PublicKey:
		spec.PrivateKey.Algorithm, spec.PrivateKey.Size = cmapi.RSAKeyAlgorithm, 2048
	default:
		spec.PrivateKey.Algorithm, spec.PrivateKey.Size = cmapi.ECDSAKeyAlgorithm, 256
	}
	tmpl, err := pki.GenerateCSR(&cmapi.Certificate{Spec: spec})
	if err != nil {
		return nil, err
	}
	der, err := pki.EncodeCSR(tmpl, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
