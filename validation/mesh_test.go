package validation

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/testpki"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/internal/kuma"
)

func TestValidateMesh(t *testing.T) {
	caPEM := testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign})
	leafPEM := testpki.CertPEM(t, now, testpki.Opts{Usage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement})
	futureCAPEM := testpki.CertPEM(t, now, testpki.Opts{CA: true, Usage: x509.KeyUsageCertSign, NotBefore: now.Add(time.Hour)})

	secret := func(name, typ string, labels map[string]string, value string) *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kong-mesh-system", Labels: labels},
			Type:       corev1.SecretType(typ),
			Data:       map[string][]byte{"value": []byte(value)},
		}
	}
	cluster := fakeLookup{
		secrets: map[string]*corev1.Secret{
			"good":       secret("good", kuma.MeshSecretType, map[string]string{kuma.MeshLabel: "demo"}, caPEM),
			"opaque":     secret("opaque", "Opaque", map[string]string{kuma.MeshLabel: "demo"}, caPEM),
			"global":     secret("global", kuma.GlobalSecretType, nil, caPEM),
			"other-mesh": secret("other-mesh", kuma.MeshSecretType, map[string]string{kuma.MeshLabel: "other"}, caPEM),
			"unlabelled": secret("unlabelled", kuma.MeshSecretType, nil, caPEM),
			"leaf":       secret("leaf", kuma.MeshSecretType, map[string]string{kuma.MeshLabel: "demo"}, leafPEM),
			"empty":      secret("empty", kuma.MeshSecretType, map[string]string{kuma.MeshLabel: "demo"}, ""),
		},
		issuers: map[cmmeta.IssuerReference]lookup.IssuerState{
			{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"}:        {Ready: true},
			{Name: "ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}: {Ready: true},
			{Name: "broken", Kind: "Issuer", Group: "cert-manager.io"}:    {Reason: "ErrGetKeyPair", Message: "secret not found"},
		},
	}
	str := func(s string) *string { return &s }
	cm := func(name string, conf kuma.CertManagerConf) kuma.Backend {
		return kuma.Backend{Name: name, Type: kuma.BackendTypeCertManager, CertManager: &conf}
	}
	ref := func(name string) kuma.CertManagerConf {
		return kuma.CertManagerConf{HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: name}}
	}
	withCA := func(conf kuma.CertManagerConf, ds kuma.DataSource) kuma.CertManagerConf {
		conf.CACert = &ds
		return conf
	}
	mtls := func(enabled string, backends ...kuma.Backend) *kuma.MTLS {
		return &kuma.MTLS{EnabledBackend: enabled, Backends: backends}
	}

	tests := map[string]struct {
		mtls         *kuma.MTLS
		lookup       lookup.Lookup
		wantErrs     []string
		wantWarnings []string
	}{
		"no mtls": {},
		"valid certmanager backend with a mesh Secret": {
			mtls: mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("good")}))),
		},
		"valid ClusterIssuer and inline CA": {
			mtls: mtls("cm", cm("cm", withCA(kuma.CertManagerConf{HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: "ca", Kind: "ClusterIssuer"}},
				kuma.DataSource{Inline: []byte(caPEM), HasInline: true}))),
		},
		"mtls off with a disabled backend still validates it": {
			mtls:     mtls("", cm("cm", ref(""))),
			wantErrs: []string{"spec.mtls.backends[0].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"},
		},
		"enabledBackend must name a backend": {
			mtls:     mtls("nope", cm("cm", ref("ca"))),
			wantErrs: []string{`spec.mtls.enabledBackend: Invalid value: "nope": has to be set to one of the backends in the mesh`},
		},
		"backend names are unique": {
			mtls:     mtls("cm", cm("cm", ref("ca")), kuma.Backend{Name: "cm", Type: "builtin"}),
			wantErrs: []string{`spec.mtls.backends[1].name: Invalid value: "cm": "cm" name is already used for another backend`},
		},
		"durations use Kuma's format": {
			mtls: mtls("b", kuma.Backend{Name: "b", Type: "builtin", DpCert: kuma.DpCert{Expiration: "1.5h", RequestTimeout: "10"}},
				kuma.Backend{Name: "c", Type: "builtin", DpCert: kuma.DpCert{Expiration: "0", RequestTimeout: "500ms"}}),
			wantErrs: []string{
				`spec.mtls.backends[0].dpCert.rotation.expiration: Invalid value: "1.5h": has to be a valid format`,
				`spec.mtls.backends[0].dpCert.requestTimeout: Invalid value: "10": has to be a valid format`,
			},
		},
		"mode must be STRICT or PERMISSIVE": {
			mtls:     mtls("b", kuma.Backend{Name: "b", Type: "builtin", Mode: "strict"}),
			wantErrs: []string{`spec.mtls.backends[0].mode: Unsupported value: "strict": supported values: "STRICT", "PERMISSIVE"`},
		},
		"other backend types get only shared rules": {
			mtls: mtls("v", kuma.Backend{Name: "v", Type: "vault"}, kuma.Backend{Name: "p", Type: "provided"}),
		},
		"issuerRef missing": {
			mtls:     mtls("cm", cm("cm", kuma.CertManagerConf{})),
			wantErrs: []string{"spec.mtls.backends[0].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"},
		},
		"issuerRef name blank": {
			mtls:     mtls("cm", cm("cm", ref(" \t"))),
			wantErrs: []string{"spec.mtls.backends[0].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"},
		},
		"issuerRef name not an object name": {
			mtls:     mtls("cm", cm("cm", ref("Bad.Name"))),
			wantErrs: []string{`spec.mtls.backends[0].conf.issuerRef.name: Invalid value: "Bad.Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		"cert-manager.io kind must be an issuer": {
			mtls:     mtls("cm", cm("cm", kuma.CertManagerConf{HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: "ca", Kind: "Certificate"}})),
			wantErrs: []string{`spec.mtls.backends[0].conf.issuerRef.kind: Unsupported value: "Certificate": supported values: "Issuer", "ClusterIssuer"`},
		},
		"external issuer: any kind, no lookup": {
			mtls: mtls("cm", cm("cm", kuma.CertManagerConf{HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: "x", Kind: "Anything", Group: "example.com"}})),
		},
		"external issuer group must be a DNS subdomain": {
			mtls:     mtls("cm", cm("cm", kuma.CertManagerConf{HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: "x", Kind: "K", Group: "Example_Com"}})),
			wantErrs: []string{`spec.mtls.backends[0].conf.issuerRef.group: Invalid value: "Example_Com": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		},
		"caCert with no source": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{}))),
			wantErrs: []string{"spec.mtls.backends[0].conf.caCert: Required value: exactly one of secret, inline, inlineString or file must be set"},
		},
		"caCert with two sources": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("good"), InlineString: str(caPEM)}))),
			wantErrs: []string{"spec.mtls.backends[0].conf.caCert: Invalid value: exactly one of secret, inline, inlineString or file must be set, but secret and inlineString are set"},
		},
		"caCert secret empty name": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("")}))),
			wantErrs: []string{"spec.mtls.backends[0].conf.caCert.secret: Required value: the name of a mesh Secret in the system namespace"},
		},
		"caCert secret not found": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("nope")}))),
			wantErrs: []string{`spec.mtls.backends[0].conf.caCert.secret: Not found: "nope": no Secret "nope" in the system namespace "kong-mesh-system", where mesh Secrets must be`},
		},
		"caCert secret of the wrong type": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("opaque")}))),
			wantErrs: []string{`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "opaque": Secret kong-mesh-system/opaque has type "Opaque"; caCert needs a mesh Secret of type "system.kuma.io/secret"`},
		},
		"caCert secret is global": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("global")}))),
			wantErrs: []string{`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "global": Secret kong-mesh-system/global is a global secret (type "system.kuma.io/global-secret"); caCert needs a mesh Secret of type "system.kuma.io/secret"`},
		},
		"caCert secret of another mesh": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("other-mesh")}))),
			wantErrs: []string{`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "other-mesh": Secret kong-mesh-system/other-mesh belongs to mesh "other" (label kuma.io/mesh=other), not to mesh "demo"`},
		},
		"caCert secret without label belongs to default": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("unlabelled")}))),
			wantErrs: []string{`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "unlabelled": Secret kong-mesh-system/unlabelled belongs to mesh "default" (it has no kuma.io/mesh label), not to mesh "demo"`},
		},
		"caCert secret without data.value": {
			mtls:     mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("empty")}))),
			wantErrs: []string{`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "empty": Secret kong-mesh-system/empty has no data.value`},
		},
		"caCert secret holding a leaf": {
			mtls: mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("leaf")}))),
			wantErrs: []string{
				`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "leaf": cert[0]: basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)`,
				`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "leaf": cert[0]: key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)`,
				`spec.mtls.backends[0].conf.caCert.secret: Invalid value: "leaf": cert[0]: key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)`,
			},
		},
		"caCert inlineString checked, every certificate": {
			mtls: mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{InlineString: str(caPEM + leafPEM)}))),
			wantErrs: []string{
				"spec.mtls.backends[0].conf.caCert.inlineString: Invalid value: cert[1]: basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)",
				"spec.mtls.backends[0].conf.caCert.inlineString: Invalid value: cert[1]: key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)",
				"spec.mtls.backends[0].conf.caCert.inlineString: Invalid value: cert[1]: key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)",
			},
		},
		"caCert not yet valid warns": {
			mtls:         mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{InlineString: str(futureCAPEM)}))),
			wantWarnings: []string{"spec.mtls.backends[0].conf.caCert.inlineString: cert[0]: is not valid before 2026-06-01T01:00:00Z"},
		},
		"caCert file warns": {
			mtls:         mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{File: str("/ca.pem")}))),
			wantWarnings: []string{"spec.mtls.backends[0].conf.caCert.file: a file on the control plane cannot be checked by this webhook; prefer secret or inlineString"},
		},
		"missing Issuer warns": {
			mtls:         mtls("cm", cm("cm", ref("later"))),
			wantWarnings: []string{`spec.mtls.backends[0].conf.issuerRef: Issuer kong-mesh-system/later not found: an Issuer must be in the system namespace "kong-mesh-system" (or use a ClusterIssuer); no dataplane certificate can be issued until it exists`},
		},
		"missing ClusterIssuer warns": {
			mtls:         mtls("cm", cm("cm", kuma.CertManagerConf{HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: "later", Kind: "ClusterIssuer"}})),
			wantWarnings: []string{"spec.mtls.backends[0].conf.issuerRef: ClusterIssuer later not found; no dataplane certificate can be issued until it exists"},
		},
		"issuer not Ready warns": {
			mtls:         mtls("cm", cm("cm", ref("broken"))),
			wantWarnings: []string{"spec.mtls.backends[0].conf.issuerRef: Issuer kong-mesh-system/broken is not Ready (ErrGetKeyPair secret not found): no dataplane certificate can be issued until it is"},
		},
		"skipValidation skips lookups and content, and warns": {
			mtls: &kuma.MTLS{EnabledBackend: "cm", SkipValidation: true, Backends: []kuma.Backend{
				cm("cm", withCA(ref("later"), kuma.DataSource{Secret: str("nope")})),
			}},
			wantWarnings: []string{"spec.mtls.skipValidation: is true, so the issuer and caCert checks that look at other objects were skipped"},
		},
		"skipValidation keeps structural checks": {
			mtls: &kuma.MTLS{EnabledBackend: "cm", SkipValidation: true, Backends: []kuma.Backend{cm("cm", ref(""))}},
			wantErrs: []string{
				"spec.mtls.backends[0].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates",
			},
			wantWarnings: []string{"spec.mtls.skipValidation: is true, so the issuer and caCert checks that look at other objects were skipped"},
		},
		"a failing lookup is an internal error, not a verdict": {
			mtls:         mtls("cm", cm("cm", withCA(ref("ca"), kuma.DataSource{Secret: str("good")}))),
			lookup:       fakeLookup{err: errors.New("cache not started")},
			wantErrs:     []string{"spec.mtls.backends[0].conf.caCert.secret: Internal error: could not look up Secret kong-mesh-system/good: cache not started"},
			wantWarnings: []string{"spec.mtls.backends[0].conf.issuerRef: could not look up Issuer kong-mesh-system/ca: cache not started"},
		},
		"a missing issuer name does not hide a missing caCert Secret": {
			mtls: mtls("cm", cm("cm", withCA(ref(""), kuma.DataSource{Secret: str("does-not-exist")}))),
			wantErrs: []string{
				"spec.mtls.backends[0].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates",
				`spec.mtls.backends[0].conf.caCert.secret: Not found: "does-not-exist": no Secret "does-not-exist" in the system namespace "kong-mesh-system", where mesh Secrets must be`,
			},
		},
		"a caCert with two sources is not looked up, and the issuer still is": {
			mtls:         mtls("cm", cm("cm", withCA(ref("later"), kuma.DataSource{Secret: str("does-not-exist"), InlineString: str("x")}))),
			wantErrs:     []string{"spec.mtls.backends[0].conf.caCert: Invalid value: exactly one of secret, inline, inlineString or file must be set, but secret and inlineString are set"},
			wantWarnings: []string{`spec.mtls.backends[0].conf.issuerRef: Issuer kong-mesh-system/later not found: an Issuer must be in the system namespace "kong-mesh-system" (or use a ClusterIssuer); no dataplane certificate can be issued until it exists`},
		},
		"a backend that did not parse is left to its type errors, the others are checked": {
			mtls: mtls("cm",
				kuma.Backend{Name: "cm", Type: kuma.BackendTypeCertManager, CertManager: &kuma.CertManagerConf{}, Malformed: true},
				cm("other", kuma.CertManagerConf{}),
			),
			wantErrs: []string{"spec.mtls.backends[1].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"},
		},
		"every error of every backend at once": {
			mtls: mtls("missing",
				cm("a", kuma.CertManagerConf{}),
				cm("a", withCA(ref("ca"), kuma.DataSource{Secret: str("opaque")})),
			),
			wantErrs: []string{
				`spec.mtls.backends[1].name: Invalid value: "a": "a" name is already used for another backend`,
				`spec.mtls.enabledBackend: Invalid value: "missing": has to be set to one of the backends in the mesh`,
				"spec.mtls.backends[0].conf.issuerRef.name: Required value: the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates",
				`spec.mtls.backends[1].conf.caCert.secret: Invalid value: "opaque": Secret kong-mesh-system/opaque has type "Opaque"; caCert needs a mesh Secret of type "system.kuma.io/secret"`,
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := Env{Env: lookup.Env{SystemNamespace: "kong-mesh-system", Now: now, Lookup: cluster}}
			if tc.lookup != nil {
				env.Lookup = tc.lookup
			}
			res := ValidateMesh(kuma.Mesh{Name: "demo", Spec: kuma.MeshSpec{MTLS: tc.mtls}}, env)
			if diff := cmp.Diff(tc.wantErrs, errorStrings(res.Errors)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWarnings, res.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateMeshKeyAlgorithm(t *testing.T) {
	str := func(s string) *string { return &s }
	tests := map[string]struct {
		alg      *string
		wantErrs []string
	}{
		"none":      {},
		"supported": {alg: str("ed25519")},
		"unknown": {alg: str("dsa-1024"), wantErrs: []string{
			`metadata.annotations[meshcert.io/key-algorithm]: Unsupported value: "dsa-1024": supported values: "ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"`,
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res := ValidateMesh(kuma.Mesh{Name: "demo", KeyAlgorithm: tc.alg}, Env{})
			if diff := cmp.Diff(tc.wantErrs, errorStrings(res.Errors)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}
