package lookup

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/meshcert/meshcert/internal/testpki"
)

// FuzzCAProblems: any bytes are checked without panic, and no message ever
// quotes the content of a PEM block (it could be a private key).
func FuzzCAProblems(f *testing.F) {
	ca := testpki.CertPEM(f, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign})
	f.Add([]byte(ca))
	f.Add([]byte(ca + "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add(bytes.Repeat([]byte("-----BEGIN A-----\n"), 100))
	f.Fuzz(func(t *testing.T, data []byte) {
		problems, warnings := CAProblems(data, now)
		rest := data
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if len(b.Bytes) < 8 {
				continue
			}
			secret := string(b.Bytes)
			for _, msg := range append(problems, warnings...) {
				if strings.Contains(msg, secret) {
					t.Fatalf("message quotes block content: %q", msg)
				}
			}
		}
	})
}
