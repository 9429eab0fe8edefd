package validation

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCAProblems(t *testing.T) {
	ca := certPEM(t, certOpts{ca: true, usage: x509.KeyUsageCertSign})
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
			pem:          certPEM(t, certOpts{ca: true, usage: x509.KeyUsageDigitalSignature}),
			wantProblems: []string{"cert[0]: key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)"},
		},
		"CA with keyAgreement": {
			pem:          certPEM(t, certOpts{ca: true, usage: x509.KeyUsageCertSign | x509.KeyUsageKeyAgreement}),
			wantProblems: []string{"cert[0]: key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)"},
		},
		"expired CA is rejected": {
			pem:          certPEM(t, certOpts{ca: true, usage: x509.KeyUsageCertSign, notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Hour)}),
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
			pem:          certPEM(t, certOpts{ca: true, usage: x509.KeyUsageCertSign, notBefore: now.Add(time.Minute)}),
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

func TestParseKumaDuration(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		"zero":              {in: "0"},
		"milliseconds":      {in: "500ms", want: 500 * time.Millisecond},
		"seconds":           {in: "10s", want: 10 * time.Second},
		"minutes":           {in: "5m", want: 5 * time.Minute},
		"hours":             {in: "24h", want: 24 * time.Hour},
		"days":              {in: "7d", want: 7 * 24 * time.Hour},
		"weeks":             {in: "2w", want: 14 * 24 * time.Hour},
		"years":             {in: "1y", want: 365 * 24 * time.Hour},
		"Go compound":       {in: "1h30m", wantErr: true},
		"fraction":          {in: "1.5h", wantErr: true},
		"no unit":           {in: "10", wantErr: true},
		"negative":          {in: "-1h", wantErr: true},
		"empty":             {in: "", wantErr: true},
		"space":             {in: "1 h", wantErr: true},
		"overflow":          {in: "99999999999999y", wantErr: true},
		"huge number":       {in: "99999999999999999999999s", wantErr: true},
		"uppercase unit":    {in: "1H", wantErr: true},
		"zero with unit ok": {in: "0s"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseKumaDuration(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseKumaDuration(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("ParseKumaDuration(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}
