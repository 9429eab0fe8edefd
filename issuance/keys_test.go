package issuance

import (
	"testing"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/test/testpki"
)

func TestCertificateRequestPEM(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSAP256, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			key, err := generateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			uris := testpki.URLs("spiffe://demo/web", "kuma://kuma.io/service/web")
			csrPEM, err := certificateRequestPEM(key, uris)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := pki.DecodeX509CertificateRequestBytes(csrPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !SameURIs(csr.URIs, uris) {
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
