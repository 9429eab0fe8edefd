package issuance

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"net/url"
	"slices"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/kuma"
)

// KeyAlgorithm is the kind of private key generated for a certificate, one
// of kuma.KeyAlgorithms.
type KeyAlgorithm string

// The supported key algorithms.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	ECDSAP384 KeyAlgorithm = "ecdsa-p384"
	Ed25519   KeyAlgorithm = "ed25519"
	RSA2048   KeyAlgorithm = "rsa-2048"
	RSA3072   KeyAlgorithm = "rsa-3072"
	RSA4096   KeyAlgorithm = "rsa-4096"
)

// KeyAlgorithmFor is the algorithm of an object's certificates, and of the
// probes of its issuer: its meshcert.io/key-algorithm annotation, else
// fallback. An unknown value is the webhook's to reject; until then, fallback.
func KeyAlgorithmFor(annotations map[string]string, fallback KeyAlgorithm) KeyAlgorithm {
	if alg := annotations[kuma.KeyAlgorithmAnnotation]; slices.Contains(kuma.KeyAlgorithms, alg) {
		return KeyAlgorithm(alg)
	}
	return fallback
}

// keySpec is how cert-manager names each algorithm and its size.
var keySpec = map[KeyAlgorithm]cmapi.CertificatePrivateKey{
	ECDSAP256: {Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
	ECDSAP384: {Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 384},
	Ed25519:   {Algorithm: cmapi.Ed25519KeyAlgorithm},
	RSA2048:   {Algorithm: cmapi.RSAKeyAlgorithm, Size: 2048},
	RSA3072:   {Algorithm: cmapi.RSAKeyAlgorithm, Size: 3072},
	RSA4096:   {Algorithm: cmapi.RSAKeyAlgorithm, Size: 4096},
}

// WorkloadUsages are the key usages of a dataplane's certificate, as Kuma's
// builtin CA gives them: it is both the server and the client of mTLS.
var WorkloadUsages = []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment, cmapi.UsageServerAuth, cmapi.UsageClientAuth}

// SVIDUsages are the key usages of an X509-SVID with a key of alg: digital
// signature, server and client auth, and key encipherment only for RSA,
// whose key can encipher.
func SVIDUsages(alg KeyAlgorithm) []cmapi.KeyUsage {
	if keySpec[alg].Algorithm == cmapi.RSAKeyAlgorithm {
		return WorkloadUsages
	}
	return []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageServerAuth, cmapi.UsageClientAuth}
}

// generateKey makes a private key in-process. It is never logged, and never
// sent to the API server: only its CSR is.
func generateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	spec, ok := keySpec[alg]
	if !ok {
		return nil, fmt.Errorf("unknown key algorithm %q", alg)
	}
	switch spec.Algorithm {
	case cmapi.RSAKeyAlgorithm:
		return pki.GenerateRSAPrivateKey(spec.Size)
	case cmapi.ECDSAKeyAlgorithm:
		return pki.GenerateECPrivateKey(spec.Size)
	default:
		return pki.GenerateEd25519PrivateKey()
	}
}

// certificateRequestPEM encodes a CSR for the URI SANs, whose key usage
// extensions match usages exactly, as cert-manager's webhook requires.
func certificateRequestPEM(key crypto.Signer, uris []*url.URL, usages []cmapi.KeyUsage) ([]byte, error) {
	spec := cmapi.CertificateSpec{Usages: usages, PrivateKey: keySpecOf(key)}
	for _, u := range uris {
		spec.URIs = append(spec.URIs, u.String())
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

// keySpecOf names a key as cert-manager does.
func keySpecOf(key crypto.Signer) *cmapi.CertificatePrivateKey {
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		return &cmapi.CertificatePrivateKey{Algorithm: cmapi.RSAKeyAlgorithm, Size: pub.Size() * 8}
	case *ecdsa.PublicKey:
		return &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: pub.Curve.Params().BitSize}
	default:
		return &cmapi.CertificatePrivateKey{Algorithm: cmapi.Ed25519KeyAlgorithm}
	}
}

// AlgorithmOf names a key's algorithm, or "" for one meshcert does not make.
func AlgorithmOf(key crypto.Signer) KeyAlgorithm {
	spec := *keySpecOf(key)
	for alg, s := range keySpec {
		if s == spec {
			return alg
		}
	}
	return ""
}
