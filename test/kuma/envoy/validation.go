package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// spiffeValidatorName is the custom validator SPIRE's ALL secret names.
const spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

// validation is a peer-certificate check as Envoy's validation context
// defines it: a chain to Roots, or, with the SPIFFE validator, to the
// roots of the trust domain of the peer's one SPIFFE ID; then, when there
// are Matchers, at least one SAN matched by one of them.
type validation struct {
	Roots    *x509.CertPool
	SPIFFE   map[string]*x509.CertPool
	Matchers []*tlsv3.SubjectAltNameMatcher
}

// spiffeRootsOf reads a SPIFFE validator's trust domains and roots.
func spiffeRootsOf(c *corev3.TypedExtensionConfig) (map[string]*x509.CertPool, error) {
	if c.GetName() != spiffeValidatorName {
		return nil, fmt.Errorf("custom validator %q is not %s", c.GetName(), spiffeValidatorName)
	}
	conf := &tlsv3.SPIFFECertValidatorConfig{}
	if err := c.GetTypedConfig().UnmarshalTo(conf); err != nil {
		return nil, fmt.Errorf("custom validator %s: %w", c.GetName(), err)
	}
	roots := map[string]*x509.CertPool{}
	for _, td := range conf.GetTrustDomains() {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(td.GetTrustBundle().GetInlineBytes()) && !pool.AppendCertsFromPEM([]byte(td.GetTrustBundle().GetInlineString())) {
			return nil, fmt.Errorf("trust domain %s has no root", td.GetName())
		}
		roots[td.GetName()] = pool
	}
	return roots, nil
}

// verify checks a peer's chain, leaf first.
func (v *validation) verify(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("the peer presented no certificate")
	}
	leaf := chain[0]
	roots := v.Roots
	if v.SPIFFE != nil {
		id, err := spiffeIDOf(leaf)
		if err != nil {
			return err
		}
		if roots = v.SPIFFE[id.Host]; roots == nil {
			return fmt.Errorf("no roots for trust domain %q of %s", id.Host, id)
		}
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return err
	}
	if len(v.Matchers) == 0 {
		return nil
	}
	for _, m := range v.Matchers {
		for _, san := range sansOf(leaf, m.GetSanType()) {
			if matches(m.GetMatcher(), san) {
				return nil
			}
		}
	}
	return fmt.Errorf("no SAN of the peer (%s) matches the validation context's matchers", describeSANs(leaf))
}

// spiffeIDOf is the leaf's one SPIFFE ID, as the SPIFFE validator requires.
func spiffeIDOf(leaf *x509.Certificate) (*url.URL, error) {
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return nil, fmt.Errorf("the peer's certificate has URI SANs %v, not one SPIFFE ID", leaf.URIs)
	}
	return leaf.URIs[0], nil
}

func sansOf(leaf *x509.Certificate, t tlsv3.SubjectAltNameMatcher_SanType) []string {
	var sans []string
	switch t {
	case tlsv3.SubjectAltNameMatcher_DNS:
		sans = leaf.DNSNames
	case tlsv3.SubjectAltNameMatcher_URI:
		for _, u := range leaf.URIs {
			sans = append(sans, u.String())
		}
	case tlsv3.SubjectAltNameMatcher_EMAIL:
		sans = leaf.EmailAddresses
	case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
		for _, ip := range leaf.IPAddresses {
			sans = append(sans, ip.String())
		}
	}
	return sans
}

func describeSANs(leaf *x509.Certificate) string {
	var all []string
	all = append(all, leaf.DNSNames...)
	for _, u := range leaf.URIs {
		all = append(all, u.String())
	}
	for _, ip := range leaf.IPAddresses {
		all = append(all, ip.String())
	}
	return strings.Join(all, ", ")
}

// matches applies an Envoy string matcher. An IP SAN is compared in its
// canonical form, as Envoy prints it.
func matches(m *matcherv3.StringMatcher, s string) bool {
	value, pattern := s, ""
	fold := m.GetIgnoreCase()
	if fold {
		value = strings.ToLower(value)
	}
	norm := func(p string) string {
		if fold {
			return strings.ToLower(p)
		}
		return p
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		pattern = norm(p.Exact)
		if ip := net.ParseIP(pattern); ip != nil {
			pattern = ip.String()
		}
		return value == pattern
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(value, norm(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(value, norm(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(value, norm(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		return err == nil && re.MatchString(s)
	}
	return false
}
