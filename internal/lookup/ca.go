package lookup

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"
)

// Kuma's X509-SVID wording for a CA certificate that breaks the rules.
const (
	msgNotCA          = "basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)"
	msgNoCertSign     = "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)"
	msgKeyAgreement   = "key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)"
	pemCertificateTag = "CERTIFICATE"
)

// maxCAProblems bounds the problems reported for one bundle: past it they are
// counted, not listed, so a megabyte of junk cannot slow the answer.
const maxCAProblems = 20

// CAProblems lists what is wrong with a PEM bundle that should hold CA
// certificates, every violated rule of every certificate, as Kuma does. An
// expired certificate is a problem, since nothing it signed can verify; one
// that is not valid yet is only a warning, since clock skew heals by itself.
// The messages name certificates as cert[i] and never quote key material.
func CAProblems(data []byte, now time.Time) (problems, warnings []string) {
	defer func() {
		if extra := len(problems) - maxCAProblems; extra > 0 {
			problems = append(problems[:maxCAProblems], fmt.Sprintf("and %d more problems", extra))
		}
	}()
	b := parseBundle(data)
	problems = append(problems, b.problems...)
	for i, cert := range b.certs {
		name := fmt.Sprintf("cert[%d]", i)
		if cert == nil {
			continue // Reported among b.problems.
		}
		if !cert.BasicConstraintsValid || !cert.IsCA {
			problems = append(problems, name+": "+msgNotCA)
		}
		if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			problems = append(problems, name+": "+msgNoCertSign)
		}
		if cert.KeyUsage&x509.KeyUsageKeyAgreement != 0 {
			problems = append(problems, name+": "+msgKeyAgreement)
		}
		if now.After(cert.NotAfter) {
			problems = append(problems, fmt.Sprintf("%s: expired at %s", name, cert.NotAfter.UTC().Format(time.RFC3339)))
		}
		if now.Before(cert.NotBefore) {
			warnings = append(warnings, fmt.Sprintf("%s: is not valid before %s", name, cert.NotBefore.UTC().Format(time.RFC3339)))
		}
	}
	return problems, warnings
}

// bundle is a PEM bundle, parsed: its certificates (nil where one does not
// parse) and the problems of its form.
type bundle struct {
	certs    []*x509.Certificate
	problems []string
}

func parseBundle(data []byte) bundle {
	ders, problems := decodeCertificates(data)
	b := bundle{certs: make([]*x509.Certificate, len(ders)), problems: problems}
	for i, der := range ders {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			b.problems = append(b.problems, fmt.Sprintf("cert[%d]: is not a valid X.509 certificate: %v", i, err))
			continue
		}
		b.certs[i] = cert
	}
	return b
}

// decodeCertificates returns the DER of each CERTIFICATE block. Any other block
// type, and any bytes that are not PEM, are problems: a private key pasted
// into caCert by mistake must be rejected, and never echoed back.
func decodeCertificates(data []byte) (certs [][]byte, problems []string) {
	rest := data
	for block := 0; ; block++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != pemCertificateTag {
			problems = append(problems, fmt.Sprintf("PEM block %d is of type %q: only %s blocks are allowed", block, b.Type, pemCertificateTag))
			continue
		}
		certs = append(certs, b.Bytes)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		problems = append(problems, "contains data that is not PEM-encoded")
	}
	if len(certs) == 0 && len(problems) == 0 {
		problems = append(problems, "contains no PEM certificate")
	}
	return certs, problems
}
