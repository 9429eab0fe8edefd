package approval

import (
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
)

// FuzzWorkloadURI feeds the approver's reading of a request arbitrary CSR
// bytes, as a thief with an agent's token may send: it must never panic,
// and whatever it accepts is one SPIFFE ID and no CA.
func FuzzWorkloadURI(f *testing.F) {
	f.Add(csr(f, webID, nil, nil), "digital signature")
	f.Add(csr(f, webID, []string{"bank.example.com"}, &basicConstraints{IsCA: true}), "cert sign")
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"), "")
	f.Fuzz(func(t *testing.T, request []byte, usage string) {
		cr := &cmapi.CertificateRequest{Spec: cmapi.CertificateRequestSpec{Request: request, Usages: []cmapi.KeyUsage{cmapi.KeyUsage(usage)}}}
		uri, problem := workloadURI(cr)
		if problem == "" && (len(uri) < len("spiffe://") || uri[:len("spiffe://")] != "spiffe://") {
			t.Errorf("accepted %q, not a SPIFFE ID", uri)
		}
	})
}
