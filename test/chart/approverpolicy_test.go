package chart

import (
	"slices"
	"strings"
	"testing"
	"time"

	policyapi "github.com/cert-manager/approver-policy/pkg/apis/policy/v1alpha1"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// TestApproverPolicy checks the policies approverPolicy.enabled renders,
// decoded strictly into approver-policy's own API types: one per issuer and
// key algorithm, each allowing meshcert's requests and nothing else, and the
// RBAC to use exactly those.
func TestApproverPolicy(t *testing.T) {
	tests := map[string]struct {
		args       []string
		want       map[string]cmapi.CertificatePrivateKey // policy name -> the key it allows
		wantIssuer map[string][3]string                   // policy name -> issuer name, kind, group
		wantHosts  string
		wantUsers  []string // the ServiceAccounts that may use the policies; default meshcert's
	}{
		"off by default": {},
		"with the agent, whose requests are meshcert's to approve by node, not the policies'": {
			args:       []string{"--set", "approverPolicy.enabled=true", "--set", "approverPolicy.issuers[0].name=mesh-ca", "--set", "agent.enabled=true", "--set", "approverPolicy.trustDomains={payments.example.com}"},
			want:       map[string]cmapi.CertificatePrivateKey{"meshcert-issuer-mesh-ca-ecdsa-p256": {Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256}},
			wantIssuer: map[string][3]string{"meshcert-issuer-mesh-ca-ecdsa-p256": {"mesh-ca", "Issuer", "cert-manager.io"}},
			wantHosts:  `^spiffe://(payments\.example\.com)/[^?#]+$`,
		},
		"one issuer, the reconciler's key": {
			args:       []string{"--set", "approverPolicy.enabled=true", "--set", "approverPolicy.issuers[0].name=mesh-ca", "--set", "reconciler.keyAlgorithm=ecdsa-p384"},
			want:       map[string]cmapi.CertificatePrivateKey{"meshcert-issuer-mesh-ca-ecdsa-p384": {Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 384}},
			wantIssuer: map[string][3]string{"meshcert-issuer-mesh-ca-ecdsa-p384": {"mesh-ca", "Issuer", "cert-manager.io"}},
			wantHosts:  `^spiffe://[a-z0-9]([-a-z0-9._]*[a-z0-9])?/[^?#]+$`,
		},
		"issuers times key algorithms, named meshes and trust domains": {
			args: []string{"--set", "approverPolicy.enabled=true",
				"--set", "approverPolicy.issuers[0].name=mesh-ca",
				"--set", "approverPolicy.issuers[1].name=root", "--set", "approverPolicy.issuers[1].kind=ClusterIssuer",
				"--set", "approverPolicy.keyAlgorithms={ed25519,rsa-3072}",
				"--set", "approverPolicy.meshes={payments}", "--set", "approverPolicy.trustDomains={payments.example.com}"},
			want: map[string]cmapi.CertificatePrivateKey{
				"meshcert-issuer-mesh-ca-ed25519":      {Algorithm: cmapi.Ed25519KeyAlgorithm},
				"meshcert-issuer-mesh-ca-rsa-3072":     {Algorithm: cmapi.RSAKeyAlgorithm, Size: 3072},
				"meshcert-clusterissuer-root-ed25519":  {Algorithm: cmapi.Ed25519KeyAlgorithm},
				"meshcert-clusterissuer-root-rsa-3072": {Algorithm: cmapi.RSAKeyAlgorithm, Size: 3072},
			},
			wantIssuer: map[string][3]string{
				"meshcert-issuer-mesh-ca-ed25519":      {"mesh-ca", "Issuer", "cert-manager.io"},
				"meshcert-issuer-mesh-ca-rsa-3072":     {"mesh-ca", "Issuer", "cert-manager.io"},
				"meshcert-clusterissuer-root-ed25519":  {"root", "ClusterIssuer", "cert-manager.io"},
				"meshcert-clusterissuer-root-rsa-3072": {"root", "ClusterIssuer", "cert-manager.io"},
			},
			wantHosts: `^spiffe://(payments|payments\.example\.com)/[^?#]+$`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := render(t, tc.args...)
			// The webhook's own certificate has a policy of its own,
			// TestWebhookCertificatePolicy's.
			policies := slices.DeleteFunc(all[policyapi.CertificateRequestPolicy](t, m, "CertificateRequestPolicy"),
				func(p *policyapi.CertificateRequestPolicy) bool { return p.Name == "meshcert-webhook" })
			if len(policies) != len(tc.want) {
				t.Fatalf("%d policies, want %d", len(policies), len(tc.want))
			}
			var names []string
			for _, p := range policies {
				names = append(names, p.Name)
				want, ok := tc.want[p.Name]
				if !ok {
					t.Errorf("unexpected policy %s", p.Name)
					continue
				}
				a, c := p.Spec.Allowed, p.Spec.Constraints
				if a.CommonName != nil || a.DNSNames != nil || a.IPAddresses != nil || a.EmailAddresses != nil || a.Subject != nil || a.OtherNames != nil {
					t.Errorf("%s allows more than URI SANs: %+v", p.Name, a)
				}
				if a.IsCA == nil || *a.IsCA {
					t.Errorf("%s: isCA %v, want false", p.Name, a.IsCA)
				}
				if want := []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment, cmapi.UsageServerAuth, cmapi.UsageClientAuth}; a.Usages == nil || !slices.Equal(*a.Usages, want) {
					t.Errorf("%s: usages %v, want %v", p.Name, a.Usages, want)
				}
				if a.URIs == nil || a.URIs.Required == nil || !*a.URIs.Required || a.URIs.Values != nil || len(a.URIs.Validations) != 3 {
					t.Fatalf("%s: uris %+v, want required, with three CEL rules", p.Name, a.URIs)
				}
				if rule := a.URIs.Validations[1].Rule; !strings.Contains(rule, `r"`+tc.wantHosts+`"`) {
					t.Errorf("%s: the SPIFFE rule %s does not match %s", p.Name, rule, tc.wantHosts)
				}
				if c == nil || c.MaxDuration == nil || c.MaxDuration.Duration != 24*time.Hour {
					t.Errorf("%s: constraints %+v, want maxDuration 24h", p.Name, c)
				}
				got := cmapi.CertificatePrivateKey{}
				if k := c.PrivateKey; k != nil && k.Algorithm != nil {
					got.Algorithm = *k.Algorithm
					if k.MinSize != nil && k.MaxSize != nil && *k.MinSize == *k.MaxSize {
						got.Size = *k.MinSize
					}
				}
				if got != want {
					t.Errorf("%s allows the key %+v, want %+v", p.Name, got, want)
				}
				ref := p.Spec.Selector.IssuerRef
				if ref == nil || ref.Name == nil || ref.Kind == nil || ref.Group == nil || [3]string{*ref.Name, *ref.Kind, *ref.Group} != tc.wantIssuer[p.Name] {
					t.Errorf("%s selects the issuer %+v, want %v", p.Name, ref, tc.wantIssuer[p.Name])
				}
				if ns := p.Spec.Selector.Namespace; ns == nil || !slices.Equal(ns.MatchNames, []string{Namespace}) {
					t.Errorf("%s selects the namespaces %+v, want %s only", p.Name, ns, Namespace)
				}
			}

			var use []rbacv1.PolicyRule
			for _, r := range all[rbacv1.Role](t, m, "Role") {
				if r.Name == "meshcert-webhook-approver-policy" {
					continue
				}
				for _, rule := range r.Rules {
					if slices.Contains(rule.Verbs, "use") {
						use = append(use, rule)
					}
				}
			}
			switch {
			case len(tc.want) == 0 && len(use) > 0:
				t.Errorf("approverPolicy off, yet the chart grants %+v", use)
			case len(tc.want) > 0 && (len(use) != 1 || !slices.Equal(use[0].Resources, []string{"certificaterequestpolicies"})):
				t.Errorf("use rules %+v, want one on certificaterequestpolicies", use)
			case len(tc.want) > 0:
				got := slices.Sorted(slices.Values(use[0].ResourceNames))
				if want := slices.Sorted(slices.Values(names)); !slices.Equal(got, want) {
					t.Errorf("meshcert may use %v, want exactly %v", got, want)
				}
				wantUsers := tc.wantUsers
				if wantUsers == nil {
					wantUsers = []string{"meshcert"}
				}
				var users []string
				for _, b := range all[rbacv1.RoleBinding](t, m, "RoleBinding") {
					if b.RoleRef.Name == "meshcert-approver-policy" {
						for _, s := range b.Subjects {
							users = append(users, s.Name)
						}
					}
				}
				if !slices.Equal(users, wantUsers) {
					t.Errorf("the policies may be used by %v, want %v", users, wantUsers)
				}
			}
		})
	}
}

// TestWebhookCertificatePolicy: with approver-policy and the webhook's
// certificate from cert-manager, the chart allows exactly that certificate,
// to cert-manager's controller alone.
func TestWebhookCertificatePolicy(t *testing.T) {
	on := []string{"--set", "approverPolicy.enabled=true", "--set", "approverPolicy.issuers[0].name=mesh-ca"}
	tests := map[string]struct {
		args []string
		want bool
	}{
		"source cert-manager":    {args: on, want: true},
		"source secret":          {args: append(slices.Clone(on), "--set", "webhook.certificate.source=secret", "--set", "webhook.certificate.secretName=tls", "--set", "webhook.certificate.caBundle=Cg=="), want: false},
		"approver-policy is off": {args: nil, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := render(t, tc.args...)
			var policy *policyapi.CertificateRequestPolicy
			for _, p := range all[policyapi.CertificateRequestPolicy](t, m, "CertificateRequestPolicy") {
				if p.Name == "meshcert-webhook" {
					policy = p
				}
			}
			if (policy != nil) != tc.want {
				t.Fatalf("the webhook's policy rendered: %v, want %v", policy != nil, tc.want)
			}
			if policy == nil {
				return
			}
			a, sel := policy.Spec.Allowed, policy.Spec.Selector
			svc := "meshcert." + Namespace + ".svc"
			if a.DNSNames == nil || a.DNSNames.Values == nil || !slices.Equal(*a.DNSNames.Values, []string{svc, svc + ".cluster.local"}) {
				t.Errorf("dnsNames %+v, want the Service's two names", a.DNSNames)
			}
			if a.URIs != nil || a.CommonName != nil || a.IPAddresses != nil || a.IsCA == nil || *a.IsCA {
				t.Errorf("allows more than the webhook's DNS names: %+v", a)
			}
			if ref := sel.IssuerRef; ref == nil || *ref.Name != "meshcert-selfsigned" || *ref.Kind != "Issuer" {
				t.Errorf("selects issuer %+v, want the chart's self-signed Issuer", ref)
			}
			var subjects []rbacv1.Subject
			for _, b := range all[rbacv1.RoleBinding](t, m, "RoleBinding") {
				if b.RoleRef.Name == "meshcert-webhook-approver-policy" {
					subjects = append(subjects, b.Subjects...)
				}
			}
			if want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "cert-manager", Namespace: "cert-manager"}}; !slices.Equal(subjects, want) {
				t.Errorf("the policy may be used by %+v, want %+v", subjects, want)
			}
		})
	}
}
