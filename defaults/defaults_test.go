package defaults

import (
	"reflect"
	"testing"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/internal/kuma"
)

func certManager(ref cmmeta.IssuerReference) kuma.Backend {
	return kuma.Backend{Name: "cm", Type: kuma.BackendTypeCertManager, CertManager: &kuma.CertManagerConf{IssuerRef: ref, HasIssuerRef: true}}
}

func TestMesh(t *testing.T) {
	tests := map[string]struct {
		spec kuma.MeshSpec
		want []string // pointer=value
	}{
		"no mtls": {spec: kuma.MeshSpec{}},
		"kind and group missing": {
			spec: kuma.MeshSpec{MTLS: &kuma.MTLS{Backends: []kuma.Backend{certManager(cmmeta.IssuerReference{Name: "ca"})}}},
			want: []string{"/spec/mtls/backends/0/conf/issuerRef/kind=Issuer", "/spec/mtls/backends/0/conf/issuerRef/group=cert-manager.io"},
		},
		"only group missing": {
			spec: kuma.MeshSpec{MTLS: &kuma.MTLS{Backends: []kuma.Backend{certManager(cmmeta.IssuerReference{Name: "ca", Kind: "ClusterIssuer"})}}},
			want: []string{"/spec/mtls/backends/0/conf/issuerRef/group=cert-manager.io"},
		},
		"already defaulted": {
			spec: kuma.MeshSpec{MTLS: &kuma.MTLS{Backends: []kuma.Backend{certManager(cmmeta.IssuerReference{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"})}}},
		},
		"external issuer keeps its kind and group": {
			spec: kuma.MeshSpec{MTLS: &kuma.MTLS{Backends: []kuma.Backend{certManager(cmmeta.IssuerReference{Name: "ca", Kind: "AWSPCAIssuer", Group: "awspca.cert-manager.io"})}}},
		},
		"only certmanager backends, at their own index": {
			spec: kuma.MeshSpec{MTLS: &kuma.MTLS{Backends: []kuma.Backend{
				{Name: "builtin", Type: kuma.BackendTypeBuiltin},
				certManager(cmmeta.IssuerReference{Name: "ca", Group: "cert-manager.io"}),
			}}},
			want: []string{"/spec/mtls/backends/1/conf/issuerRef/kind=Issuer"},
		},
		"no issuerRef object is left for validation": {
			spec: kuma.MeshSpec{MTLS: &kuma.MTLS{Backends: []kuma.Backend{
				{Name: "cm", Type: kuma.BackendTypeCertManager, CertManager: &kuma.CertManagerConf{}},
			}}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := pointers(Mesh(tc.spec)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Mesh() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestChangePointerEscapes(t *testing.T) {
	c := Change{Path: []string{"a/b", "c~d"}}
	if got, want := c.Pointer(), "/a~1b/c~0d"; got != want {
		t.Errorf("Pointer() = %q, want %q", got, want)
	}
}

func TestMeshIdentity(t *testing.T) {
	extension := func(config string) *kuma.MeshIdentityResource {
		return &kuma.MeshIdentityResource{Spec: kuma.MeshIdentitySpec{Provider: &kuma.Provider{
			Type: kuma.ProviderTypeExtension, Extension: &kuma.ProviderExtension{Name: kuma.CertManagerExtension, Config: []byte(config)},
		}}}
	}
	spire := func(annotations map[string]string) *kuma.MeshIdentityResource {
		mid := &kuma.MeshIdentityResource{Spec: kuma.MeshIdentitySpec{Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire}}}
		mid.Annotations = annotations
		return mid
	}
	tests := map[string]struct {
		mid  *kuma.MeshIdentityResource
		want []string // pointer=value
	}{
		"Kong Mesh's extension: kind and group": {
			mid:  extension(`{"issuerRef":{"name":"ca"}}`),
			want: []string{"/spec/provider/extension/config/issuerRef/kind=Issuer", "/spec/provider/extension/config/issuerRef/group=cert-manager.io"},
		},
		"Kong Mesh's extension, defaulted already":                       {mid: extension(`{"issuerRef":{"name":"ca","kind":"ClusterIssuer","group":"cert-manager.io"}}`)},
		"Kong Mesh's extension without issuerRef is left for validation": {mid: extension(`{"caCert":{"secret":"ca"}}`)},
		"Kong Mesh's extension of the wrong type is left for validation": {mid: extension(`{"issuerRef":"ca"}`)},
		"meshcert's annotations: kind and group": {
			mid:  spire(map[string]string{kuma.IssuerNameAnnotation: "ca"}),
			want: []string{"/metadata/annotations/meshcert.io~1issuer-kind=Issuer", "/metadata/annotations/meshcert.io~1issuer-group=cert-manager.io"},
		},
		"meshcert's annotations with an external issuer": {
			mid: spire(map[string]string{kuma.IssuerNameAnnotation: "ca", kuma.IssuerKindAnnotation: "AWSPCAIssuer", kuma.IssuerGroupAnnotation: "awspca.cert-manager.io"}),
		},
		"Spire without meshcert's annotations is not meshcert's": {mid: spire(map[string]string{"team": "a"})},
		"another extension is not meshcert's": {
			mid: &kuma.MeshIdentityResource{Spec: kuma.MeshIdentitySpec{Provider: &kuma.Provider{
				Type: kuma.ProviderTypeExtension, Extension: &kuma.ProviderExtension{Name: "vault", Config: []byte(`{"issuerRef":{"name":"ca"}}`)},
			}}},
		},
		"Bundled is not meshcert's": {mid: &kuma.MeshIdentityResource{Spec: kuma.MeshIdentitySpec{Provider: &kuma.Provider{Type: kuma.ProviderTypeBundled}}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := pointers(MeshIdentity(tc.mid)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("MeshIdentity() = %q, want %q", got, tc.want)
			}
		})
	}
}

// pointers writes changes as pointer=value.
func pointers(changes []Change) []string {
	var out []string
	for _, c := range changes {
		out = append(out, c.Pointer()+"="+c.Value)
	}
	return out
}
