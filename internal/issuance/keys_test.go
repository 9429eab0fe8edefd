package issuance

import (
	"slices"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/kuma"

	"github.com/meshcert/meshcert/internal/testpki"
)

func TestCertificateRequestPEM(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSAP256, ECDSAP384, Ed25519, RSA2048, RSA3072, RSA4096} {
		t.Run(string(alg), func(t *testing.T) {
			key, err := generateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			uris := testpki.URLs("spiffe://demo/web", "kuma://kuma.io/service/web")
			usages := SVIDUsages(alg)
			csrPEM, err := certificateRequestPEM(key, uris, usages)
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
			if got := AlgorithmOf(key); got != alg {
				t.Errorf("AlgorithmOf = %q, want %q", got, alg)
			}
		})
	}
	if len(keySpec) != len(kuma.KeyAlgorithms) {
		t.Errorf("issuance makes %d key algorithms, model names %d", len(keySpec), len(kuma.KeyAlgorithms))
	}
	for _, name := range kuma.KeyAlgorithms {
		if _, ok := keySpec[KeyAlgorithm(name)]; !ok {
			t.Errorf("model names %s, which issuance cannot make", name)
		}
	}
	if _, err := generateKey("dsa"); err == nil {
		t.Error("an unknown algorithm made a key")
	}
}

func TestKeyAlgorithmFor(t *testing.T) {
	tests := map[string]struct {
		annotations map[string]string
		want        KeyAlgorithm
	}{
		"no annotation":      {want: ECDSAP256},
		"a known algorithm":  {annotations: map[string]string{kuma.KeyAlgorithmAnnotation: "rsa-3072"}, want: RSA3072},
		"an unknown value":   {annotations: map[string]string{kuma.KeyAlgorithmAnnotation: "dsa-1024"}, want: ECDSAP256},
		"other annotations":  {annotations: map[string]string{"meshcert.io/other": "ed25519"}, want: ECDSAP256},
		"an empty algorithm": {annotations: map[string]string{kuma.KeyAlgorithmAnnotation: ""}, want: ECDSAP256},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := KeyAlgorithmFor(tc.annotations, ECDSAP256); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSVIDUsages(t *testing.T) {
	for alg, wantEncipherment := range map[KeyAlgorithm]bool{ECDSAP256: false, ECDSAP384: false, Ed25519: false, RSA2048: true, RSA3072: true, RSA4096: true} {
		got := SVIDUsages(alg)
		if slices.Contains(got, cmapi.UsageKeyEncipherment) != wantEncipherment {
			t.Errorf("%s: usages %v; key encipherment wanted: %v", alg, got, wantEncipherment)
		}
		for _, u := range []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageServerAuth, cmapi.UsageClientAuth} {
			if !slices.Contains(got, u) {
				t.Errorf("%s: usages %v lack %s", alg, got, u)
			}
		}
	}
}
