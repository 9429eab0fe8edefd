package trust

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/testpki"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func TestEncodeRootsIsStable(t *testing.T) {
	a, b := testpki.NewCA(t, "a", now), testpki.NewCA(t, "b", now)
	one := EncodeRoots([]*x509.Certificate{a.Cert, b.Cert, a.Cert})
	two := EncodeRoots([]*x509.Certificate{b.Cert, a.Cert})
	if string(one) != string(two) {
		t.Error("the same roots in another order, or twice, give another bundle")
	}
	if certs, _ := pki.DecodeX509CertificateSetBytes(one); len(certs) != 2 {
		t.Errorf("%d certificates in the bundle, want 2", len(certs))
	}
}
