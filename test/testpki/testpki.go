// Package testpki makes certificates for unit tests: self-signed ones with
// chosen properties, and a CA that signs leaves.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// Opts are the properties of a self-signed certificate.
type Opts struct {
	CA        bool
	Usage     x509.KeyUsage
	NotBefore time.Time
	NotAfter  time.Time
}

// CertPEM makes a self-signed certificate, valid from an hour before now to a
// day after it unless o says otherwise.
func CertPEM(t testing.TB, now time.Time, o Opts) string {
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
func Key(t testing.TB) crypto.Signer {
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
	PEM  []byte
	key  crypto.Signer
}

// NewCA makes a root CA named name, valid from an hour before now to a day after it.
func NewCA(t testing.TB, name string, now time.Time) CA {
	t.Helper()
	key := Key(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Issue signs a leaf for key with the URIs, valid from notBefore for lifetime.
func (ca CA) Issue(t testing.TB, key crypto.Signer, uris []*url.URL, notBefore time.Time, lifetime time.Duration) []byte {
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
func (ca CA) IssuePublic(t testing.TB, pub crypto.PublicKey, uris []*url.URL, notBefore time.Time, lifetime time.Duration) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(notBefore.UnixNano()), URIs: uris, NotBefore: notBefore, NotAfter: notBefore.Add(lifetime),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
