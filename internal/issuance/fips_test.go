package issuance

import (
	"crypto/fips140"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/testpki"
)

// TestKeysInFIPS140OnlyMode makes each key meshcert offers, and its CSR,
// where Go's FIPS 140-3 mode is enforced (GODEBUG=fips140=only), in which
// non-approved cryptography fails. FIPS 186-5 approves all of them: ECDSA on
// P-256 and P-384, Ed25519 (pure, as X.509 signs with it) and RSA from 2048
// bits. A key FIPS forbids, RSA of 1024 bits, fails there, which shows the
// mode is enforced.
func TestKeysInFIPS140OnlyMode(t *testing.T) {
	if !fips140.Enforced() {
		if strings.Contains(os.Getenv("GODEBUG"), "fips140=only") {
			t.Fatal("GODEBUG=fips140=only did not enforce FIPS 140-3 mode")
		}
		// The mode is fixed when a process starts: run this test in one that enforces it.
		cmd := exec.Command(os.Args[0], "-test.run=^TestKeysInFIPS140OnlyMode$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "GODEBUG=fips140=only")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestKeysInFIPS140OnlyMode") {
			t.Fatalf("with GODEBUG=fips140=only: %v\n%s", err, out)
		}
		return
	}
	if !fips140.Enabled() {
		t.Fatal("FIPS 140-3 mode is enforced but not enabled")
	}

	tests := map[string]struct {
		alg     KeyAlgorithm
		forbid  bool
		makeKey func() error
	}{
		"ecdsa-p256, the default": {alg: ECDSAP256},
		"ecdsa-p384":              {alg: ECDSAP384},
		"ed25519":                 {alg: Ed25519},
		"rsa-2048":                {alg: RSA2048},
		"rsa-3072":                {alg: RSA3072},
		"rsa-4096":                {alg: RSA4096},
		"rsa-1024, which FIPS forbids": {forbid: true, makeKey: func() error {
			_, err := rsa.GenerateKey(rand.Reader, 1024)
			return err
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.forbid {
				err := tc.makeKey()
				if err == nil || !strings.Contains(err.Error(), "FIPS 140-only mode") {
					t.Errorf("err = %v, want FIPS 140-only mode to forbid it", err)
				}
				return
			}
			key, err := generateKey(tc.alg)
			if err != nil {
				t.Fatalf("generating the key: %v", err)
			}
			csrPEM, err := certificateRequestPEM(key, testpki.URLs("spiffe://demo/web"), SVIDUsages(tc.alg))
			if err != nil {
				t.Fatalf("making the CSR: %v", err)
			}
			csr, err := pki.DecodeX509CertificateRequestBytes(csrPEM)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Errorf("the CSR's signature (%s): %v", csr.SignatureAlgorithm, err)
			}
			if csr.SignatureAlgorithm == x509.UnknownSignatureAlgorithm || AlgorithmOf(key) != tc.alg {
				t.Errorf("a %s CSR for a key of %s", csr.SignatureAlgorithm, AlgorithmOf(key))
			}
		})
	}
}
