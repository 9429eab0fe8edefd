// Package testpki makes the certificates that meshcert's tests, its bench and
// its local runner use: root CAs that sign leaves and CSRs as cert-manager's
// CA issuer would, and self-signed certificates with chosen properties. It is
// never part of the meshcert binary.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
)

// TB is what the helpers below need of a test or benchmark; the local
// runner, which has none, uses New.
type TB interface {
	Helper()
	Fatal(args ...any)
}

// Opts are the properties of a self-signed certificate.
type Opts struct {
	CA        bool
	Usage     x509.KeyUsage
	NotBefore time.Time
	NotAfter  time.Time
}

// CertPEM makes a self-signed certificate, valid from an hour before now to a
// day after it unless o says otherwise.
func CertPEM(t TB, now time.Time, o Opts) string {
	t.Helper()
	key := Key(t)
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test"},
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		IsCA:                  o.CA,
		BasicConstraintsValid: true,
		KeyUsage:              o.Usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// Key makes an ECDSA P-256 key.
func Key(t TB) crypto.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// CA is a root CA that signs leaves.
type CA struct {
	Cert *x509.Certificate
	// PEM is the certificate, KeyPEM its PKCS#8 key: what a cert-manager CA
	// issuer's Secret holds.
	PEM    []byte
	KeyPEM []byte
	key    crypto.Signer
}

// LongLived is a root's lifetime that outlives any run.
const LongLived = 10 * 365 * 24 * time.Hour

// New makes a self-signed ECDSA P-256 root CA named commonName, valid from
// notBefore to notAfter.
func New(commonName string, notBefore, notAfter time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{
		Cert:   cert,
		PEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		key:    key,
	}, nil
}

// NewCA makes a root CA named name for a test, valid from an hour before now
// to a day after it.
func NewCA(t TB, name string, now time.Time) CA {
	t.Helper()
	ca, err := New(name, now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return *ca
}

// Sign signs a PEM CSR for duration, as cert-manager's CA issuer would.
func (ca CA) Sign(csrPEM []byte, duration time.Duration) ([]byte, error) {
	tmpl, err := pki.CertificateTemplateFromCSRPEM(csrPEM, pki.CertificateTemplateOverrideDuration(duration))
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
		return nil, err
	}
	signed, _, err := pki.SignCertificate(tmpl, ca.Cert, tmpl.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return signed, nil
}

// Issue signs a leaf for key with the URIs, valid from notBefore for lifetime.
func (ca CA) Issue(t TB, key crypto.Signer, uris []*url.URL, notBefore time.Time, lifetime time.Duration) []byte {
	t.Helper()
	return ca.IssuePublic(t, key.Public(), uris, notBefore, lifetime)
}

// URLs parses URIs, which must be valid.
func URLs(raw ...string) []*url.URL {
	var out []*url.URL
	for _, r := range raw {
		u, err := url.Parse(r)
		if err != nil {
			panic(err)
		}
		out = append(out, u)
	}
	return out
}

// IssuePublic signs a leaf for a public key, as a signer does from a CSR.
func (ca CA) IssuePublic(t TB, pub crypto.PublicKey, uris []*url.URL, notBefore time.Time, lifetime time.Duration) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(notBefore.UnixNano()), URIs: uris, NotBefore: notBefore, NotAfter: notBefore.Add(lifetime),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
