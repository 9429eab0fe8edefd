package main

import (
	"crypto/x509"
	"encoding/pem"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

func TestValidationVerify(t *testing.T) {
	ours, foreign := newFakeSpire(t), newFakeSpire(t)
	backend := "spiffe://" + trustDomain + "/workload/backend"
	uri := func(m *matcherv3.StringMatcher) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
	}
	tests := map[string]struct {
		issuer     *fakeSpire
		validation func(all *validation) *validation
		wantErr    bool
	}{
		"ALL, no matchers": {
			issuer:     ours,
			validation: func(all *validation) *validation { return all },
		},
		"ALL and kuma-cp's exact URI matcher": {
			issuer: ours,
			validation: func(all *validation) *validation {
				all.Matchers = []*tlsv3.SubjectAltNameMatcher{uri(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: backend}})}
				return all
			},
		},
		"ALL and a matcher of another workload": {
			issuer: ours,
			validation: func(all *validation) *validation {
				all.Matchers = []*tlsv3.SubjectAltNameMatcher{uri(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://" + trustDomain + "/workload/web"}})}
				return all
			},
			wantErr: true,
		},
		"ALL and a prefix matcher": {
			issuer: ours,
			validation: func(all *validation) *validation {
				all.Matchers = []*tlsv3.SubjectAltNameMatcher{uri(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}})}
				return all
			},
		},
		"a foreign certificate of the same trust domain": {
			issuer:     foreign,
			validation: func(all *validation) *validation { return all },
			wantErr:    true,
		},
		"no roots for the trust domain": {
			issuer: ours,
			validation: func(all *validation) *validation {
				return &validation{SPIFFE: map[string]*x509.CertPool{"other.mesh.local": all.SPIFFE[trustDomain]}}
			},
			wantErr: true,
		},
		"trusted_ca and a DNS matcher the SVID lacks": {
			issuer: ours,
			validation: func(all *validation) *validation {
				return &validation{Roots: all.SPIFFE[trustDomain], Matchers: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "backend"}}}}}
			},
			wantErr: true,
		},
	}
	allSecret, err := ours.secret("ALL")
	must(t, err)
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			all, err := validationOf(allSecret.GetValidationContext())
			must(t, err)
			svid, err := test.issuer.secret(backend)
			must(t, err)
			chain, err := parseChainPEM(svid.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			must(t, err)
			err = test.validation(all).verify(chain)
			if (err != nil) != test.wantErr {
				t.Errorf("verify: %v, want an error: %v", err, test.wantErr)
			}
		})
	}
}

func parseChainPEM(pemBytes []byte) ([]*x509.Certificate, error) {
	var ders [][]byte
	for {
		var block *pem.Block
		if block, pemBytes = pem.Decode(pemBytes); block == nil {
			return parseChain(ders)
		}
		ders = append(ders, block.Bytes)
	}
}
