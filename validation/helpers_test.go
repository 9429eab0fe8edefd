package validation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// now is the fixed clock of these tests.
var now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

type certOpts struct {
	ca        bool
	usage     x509.KeyUsage
	notBefore time.Time
	notAfter  time.Time
}

// certPEM makes a self-signed certificate.
func certPEM(t testing.TB, o certOpts) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = now.Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = now.Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test"},
		NotBefore:             o.notBefore,
		NotAfter:              o.notAfter,
		IsCA:                  o.ca,
		BasicConstraintsValid: true,
		KeyUsage:              o.usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// fakeLookup serves Secrets and issuers from maps.
type fakeLookup struct {
	secrets map[string]*corev1.Secret
	issuers map[cmmeta.IssuerReference]IssuerState
	// issued counts certificates by "mesh/backend".
	issued map[string]int
	err    error
}

func (f fakeLookup) IssuedBy(mesh, backend string) (int, error) {
	return f.issued[mesh+"/"+backend], f.err
}

func (f fakeLookup) SystemSecret(name string) (*corev1.Secret, error) {
	return f.secrets[name], f.err
}

func (f fakeLookup) Issuer(ref cmmeta.IssuerReference) (*IssuerState, error) {
	if s, ok := f.issuers[ref]; ok {
		return &s, f.err
	}
	return nil, f.err
}

func errorStrings(errs field.ErrorList) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}
