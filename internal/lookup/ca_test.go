package lookup

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshcert/meshcert/internal/testpki"

	"github.com/google/go-cmp/cmp"
)

// now is the fixed clock of these tests.
var now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

func TestCAProblems(t *testing.T) {
	ca := testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign})
	tests := map[string]struct {
		pem          string
		wantProblems []string
		wantWarnings []string
	}{
		"one CA":          {pem: ca},
		"a bundle of CAs": {pem: ca + "\n" + ca},
		"empty":           {pem: "", wantProblems: []string{"contains no PEM certificate"}},
		"not PEM":         {pem: "hello", wantProblems: []string{"contains data that is not PEM-encoded"}},
		"trailing junk":   {pem: ca + "junk", wantProblems: []string{"contains data that is not PEM-encoded"}},
		"private key is refused, not echoed": {
			pem:          ca + "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
			wantProblems: []string{`PEM block 1 is of type "PRIVATE KEY": only CERTIFICATE blocks are allowed`},
		},
		"garbage certificate": {
			pem:          "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
			wantProblems: []string{"cert[0]: is not a valid X.509 certificate: x509: malformed certificate"},
		},
		"CA without keyCertSign": {
			pem:          testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageDigitalSignature}),
			wantProblems: []string{"cert[0]: key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)"},
		},
		"CA with keyAgreement": {
			pem:          testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign | x509.KeyUsageKeyAgreement}),
			wantProblems: []string{"cert[0]: key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)"},
		},
		"expired CA is rejected": {
			pem:          testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}),
			wantProblems: []string{"cert[0]: expired at 2026-05-31T23:00:00Z"},
		},
		"a megabyte of junk: problems counted past twenty": {
			pem: strings.Repeat("-----BEGIN JUNK-----\nAAAA\n-----END JUNK-----\n", (1<<20)/40),
			wantProblems: append(func() []string {
				var p []string
				for i := range 20 {
					p = append(p, fmt.Sprintf(`PEM block %d is of type "JUNK": only CERTIFICATE blocks are allowed`, i))
				}
				return p
			}(), "and 26194 more problems"),
		},
		"CA not yet valid only warns": {
			pem:          testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign, NotBefore: now.Add(time.Minute)}),
			wantWarnings: []string{"cert[0]: is not valid before 2026-06-01T00:01:00Z"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			problems, warnings := CAProblems([]byte(tc.pem), now)
			if diff := cmp.Diff(tc.wantProblems, problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWarnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
			for _, p := range problems {
				if strings.Contains(p, "c2VjcmV0") {
					t.Errorf("a problem echoes PEM content: %q", p)
				}
			}
		})
	}
}
