package validation

import (
	"crypto/x509"
	"encoding/json"
	"testing"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/testpki"
)

func TestValidateMeshIdentity(t *testing.T) {
	caPEM := testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign})
	cluster := fakeLookup{
		secrets: map[string]*corev1.Secret{
			"payments-ca": {ObjectMeta: metav1.ObjectMeta{Name: "payments-ca", Labels: map[string]string{kuma.MeshLabel: "payments"}},
				Type: kuma.MeshSecretType, Data: map[string][]byte{"value": []byte(caPEM)}},
			"other-ca": {ObjectMeta: metav1.ObjectMeta{Name: "other-ca", Labels: map[string]string{kuma.MeshLabel: "other"}},
				Type: kuma.MeshSecretType, Data: map[string][]byte{"value": []byte(caPEM)}},
		},
		issuers: map[cmmeta.IssuerReference]lookup.IssuerState{
			{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"}: {Ready: true},
		},
		meshServices: map[string]string{"payments": "Exclusive", "legacy": "Disabled", "unset": ""},
	}
	str := func(s string) *string { return &s }
	extension := func(config string) *kuma.MeshIdentityResource {
		mid := &kuma.MeshIdentityResource{Spec: kuma.MeshIdentitySpec{Provider: &kuma.Provider{
			Type: kuma.ProviderTypeExtension, Extension: &kuma.ProviderExtension{Name: kuma.CertManagerExtension, Config: []byte(config)},
		}}}
		mid.Name, mid.Namespace, mid.Labels = "payments-id", "kong-mesh-system", map[string]string{kuma.MeshLabel: "payments"}
		return mid
	}
	spire := func(annotations map[string]string) *kuma.MeshIdentityResource {
		mid := extension("")
		mid.Spec.Provider = &kuma.Provider{Type: kuma.ProviderTypeSpire, Spire: []byte(`{}`)}
		mid.Annotations = annotations
		return mid
	}
	with := func(mid *kuma.MeshIdentityResource, f func(*kuma.MeshIdentityResource)) *kuma.MeshIdentityResource {
		f(mid)
		return mid
	}
	tests := map[string]struct {
		mid          *kuma.MeshIdentityResource
		wantErrs     []string
		wantWarnings []string
	}{
		"Kong Mesh's shape, valid":      {mid: extension(`{"issuerRef":{"name":"ca"},"caCert":{"secret":"payments-ca"}}`)},
		"Kong Mesh's shape, inline CA":  {mid: extension(`{"issuerRef":{"name":"ca"},"caCert":{"inlineString":` + quote(caPEM) + `}}`)},
		"meshcert's annotations, valid": {mid: spire(map[string]string{kuma.IssuerNameAnnotation: "ca", kuma.CACertSecretAnnotation: "payments-ca"})},
		"a Mesh without meshServices Exclusive, warned in Kuma 2.14's terms": {
			mid:          with(spire(map[string]string{kuma.IssuerNameAnnotation: "ca"}), func(m *kuma.MeshIdentityResource) { m.Labels[kuma.MeshLabel] = "legacy" }),
			wantWarnings: []string{`metadata.labels[kuma.io/mesh]: Mesh legacy has spec.meshServices.mode "Disabled", not "Exclusive": Kuma 2.14 never marks this MeshIdentity Ready (reason MeshServicesDisabled), so no workload gets its identity`},
		},
		"a Mesh with no meshServices at all": {
			mid:          with(spire(map[string]string{kuma.IssuerNameAnnotation: "ca"}), func(m *kuma.MeshIdentityResource) { m.Labels[kuma.MeshLabel] = "unset" }),
			wantWarnings: []string{`metadata.labels[kuma.io/mesh]: Mesh unset has spec.meshServices.mode "", not "Exclusive": Kuma 2.14 never marks this MeshIdentity Ready (reason MeshServicesDisabled), so no workload gets its identity`},
		},
		"a Mesh not created yet: nothing to say of it": {
			mid: with(spire(map[string]string{kuma.IssuerNameAnnotation: "ca"}), func(m *kuma.MeshIdentityResource) { m.Labels[kuma.MeshLabel] = "later" }),
		},
		"Spire without provider.spire, in Kuma's words": {
			mid:      with(spire(map[string]string{kuma.IssuerNameAnnotation: "ca"}), func(m *kuma.MeshIdentityResource) { m.Spec.Provider.Spire = nil }),
			wantErrs: []string{"spec.provider.spire: Required value: configuration needs to be defined"},
		},
		"Spire with provider.spire null": {
			mid:      with(spire(map[string]string{kuma.IssuerNameAnnotation: "ca"}), func(m *kuma.MeshIdentityResource) { m.Spec.Provider.Spire = []byte("null") }),
			wantErrs: []string{"spec.provider.spire: Required value: configuration needs to be defined"},
		},
		"not meshcert's: Bundled": {mid: with(extension(""), func(m *kuma.MeshIdentityResource) {
			m.Spec.Provider.Type = kuma.ProviderTypeBundled
			m.Namespace = "elsewhere"
		})},
		"not meshcert's: Spire, no marks": {mid: with(spire(map[string]string{"team": "a"}), func(m *kuma.MeshIdentityResource) { m.Namespace = "elsewhere" })},
		"issuer name missing, caCert Secret of another mesh: both": {
			mid: extension(`{"issuerRef":{"kind":"Issuer"},"caCert":{"secret":"other-ca"}}`),
			wantErrs: []string{
				"spec.provider.extension.config.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates",
				`spec.provider.extension.config.caCert.secret: Invalid value: "other-ca": Secret kong-mesh-system/other-ca belongs to mesh "other" (label kuma.io/mesh=other), not to mesh "payments"`,
			},
		},
		"a config value of the wrong type": {
			mid:      extension(`{"issuerRef":"ca"}`),
			wantErrs: []string{"spec.provider.extension.config.issuerRef: Invalid value: must be an object, not a string"},
		},
		"an annotation names a missing issuer name": {
			mid: spire(map[string]string{kuma.IssuerKindAnnotation: "ClusterIssuer"}),
			wantErrs: []string{"metadata.annotations[meshcert.io/issuer-name]: Required value: once any meshcert.io/issuer-* annotation is set: " +
				"the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"},
		},
		"annotations with a wrong kind and a missing caCert Secret": {
			mid: spire(map[string]string{kuma.IssuerNameAnnotation: "ca", kuma.IssuerKindAnnotation: "Certificate", kuma.CACertSecretAnnotation: "nope"}),
			wantErrs: []string{
				`metadata.annotations[meshcert.io/issuer-kind]: Unsupported value: "Certificate": supported values: "Issuer", "ClusterIssuer"`,
				`metadata.annotations[meshcert.io/ca-cert-secret]: Not found: "nope": no Secret "nope" in the system namespace "kong-mesh-system", where mesh Secrets must be`,
			},
		},
		"a missing issuer warns": {
			mid:          spire(map[string]string{kuma.IssuerNameAnnotation: "later"}),
			wantWarnings: []string{`metadata.annotations[meshcert.io/issuer-name]: Issuer kong-mesh-system/later not found: an Issuer must be in the system namespace "kong-mesh-system" (or use a ClusterIssuer); no dataplane certificate can be issued until it exists`},
		},
		"outside the system namespace, as Kuma rejects it": {
			mid:      with(extension(`{"issuerRef":{"name":"ca"}}`), func(m *kuma.MeshIdentityResource) { m.Namespace = "payments" }),
			wantErrs: []string{`metadata.namespace: Invalid value: "payments": resource type MeshIdentity can be created only in the system namespace:kong-mesh-system`},
		},
		"without a mesh label, the mesh is default, as Kuma reads it": {
			mid:      with(extension(`{"issuerRef":{"name":"ca"},"caCert":{"secret":"payments-ca"}}`), func(m *kuma.MeshIdentityResource) { m.Labels = nil }),
			wantErrs: []string{`spec.provider.extension.config.caCert.secret: Invalid value: "payments-ca": Secret kong-mesh-system/payments-ca belongs to mesh "payments" (label kuma.io/mesh=payments), not to mesh "default"`},
		},
		"templates that do not parse": {
			mid: with(extension(`{"issuerRef":{"name":"ca"}}`), func(m *kuma.MeshIdentityResource) {
				m.Spec.SpiffeID = &kuma.SpiffeID{TrustDomain: str("{{ .Mesh "), Path: str("/ns/{{ .Namespace|invalid }}")}
			}),
			wantErrs: []string{
				`spec.spiffeID.trustDomain: Invalid value: "{{ .Mesh ": couldn't parse template: template: :1: unclosed action`,
				`spec.spiffeID.path: Invalid value: "/ns/{{ .Namespace|invalid }}": couldn't parse template: template: :1: function "invalid" not defined`,
			},
		},
		"a trust domain that is not one": {
			mid: with(extension(`{"issuerRef":{"name":"ca"}}`), func(m *kuma.MeshIdentityResource) {
				m.Spec.SpiffeID = &kuma.SpiffeID{TrustDomain: str("{{ .Mesh }}.Example.COM")}
			}),
			wantErrs: []string{`spec.spiffeID.trustDomain: Invalid value: "{{ .Mesh }}.Example.COM": does not give a valid trust domain for mesh "payments": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		},
		"a path variable of the trust domain's": {
			mid: with(extension(`{"issuerRef":{"name":"ca"}}`), func(m *kuma.MeshIdentityResource) {
				m.Spec.SpiffeID = &kuma.SpiffeID{Path: str("/mesh/{{ .Mesh }}")}
			}),
			wantErrs: []string{`spec.spiffeID.path: Invalid value: "/mesh/{{ .Mesh }}": does not give a valid SPIFFE ID for a workload: parsing the template: {{.Mesh}} is not one of its variables .TrustDomain, .Namespace, .ServiceAccount, .Workload`},
		},
		"labels and Kuma's variables render": {
			mid: with(extension(`{"issuerRef":{"name":"ca"}}`), func(m *kuma.MeshIdentityResource) {
				m.Spec.SpiffeID = &kuma.SpiffeID{TrustDomain: str("{{ .Mesh }}.{{ .Zone }}.example.com"), Path: str(`/team/{{ label "team" }}/{{ .Workload }}`)}
			}),
		},
		"an unknown key algorithm": {
			mid: spire(map[string]string{kuma.IssuerNameAnnotation: "ca", kuma.KeyAlgorithmAnnotation: "rsa-1024", kuma.DurationAnnotation: "a day"}),
			wantErrs: []string{
				`metadata.annotations[meshcert.io/key-algorithm]: Unsupported value: "rsa-1024": supported values: "ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"`,
				`metadata.annotations[meshcert.io/duration]: Invalid value: "a day": must be a positive duration such as 24h or 90m`,
			},
		},
		"a mesh-trust annotation must be Enabled or Disabled": {
			mid:      spire(map[string]string{kuma.IssuerNameAnnotation: "ca", kuma.MeshTrustAnnotation: "off"}),
			wantErrs: []string{`metadata.annotations[meshcert.io/mesh-trust]: Unsupported value: "off": supported values: "Enabled", "Disabled"`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := Env{Env: lookup.Env{SystemNamespace: "kong-mesh-system", Now: now, Lookup: cluster}, LocalZone: "zone-1"}
			res := ValidateMeshIdentity(tc.mid, env)
			if diff := cmp.Diff(tc.wantErrs, errorStrings(res.Errors)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWarnings, res.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
