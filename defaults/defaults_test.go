package defaults

import (
	"reflect"
	"testing"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/model"
)

func certManager(ref cmmeta.IssuerReference) model.Backend {
	return model.Backend{Name: "cm", Type: model.BackendTypeCertManager, CertManager: &model.CertManagerConf{IssuerRef: ref, HasIssuerRef: true}}
}

func TestMesh(t *testing.T) {
	tests := map[string]struct {
		spec model.MeshSpec
		want []string // pointer=value
	}{
		"no mtls": {spec: model.MeshSpec{}},
		"kind and group missing": {
			spec: model.MeshSpec{MTLS: &model.MTLS{Backends: []model.Backend{certManager(cmmeta.IssuerReference{Name: "ca"})}}},
			want: []string{"/spec/mtls/backends/0/conf/issuerRef/kind=Issuer", "/spec/mtls/backends/0/conf/issuerRef/group=cert-manager.io"},
		},
		"only group missing": {
			spec: model.MeshSpec{MTLS: &model.MTLS{Backends: []model.Backend{certManager(cmmeta.IssuerReference{Name: "ca", Kind: "ClusterIssuer"})}}},
			want: []string{"/spec/mtls/backends/0/conf/issuerRef/group=cert-manager.io"},
		},
		"already defaulted": {
			spec: model.MeshSpec{MTLS: &model.MTLS{Backends: []model.Backend{certManager(cmmeta.IssuerReference{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"})}}},
		},
		"external issuer keeps its kind and group": {
			spec: model.MeshSpec{MTLS: &model.MTLS{Backends: []model.Backend{certManager(cmmeta.IssuerReference{Name: "ca", Kind: "AWSPCAIssuer", Group: "awspca.cert-manager.io"})}}},
		},
		"only certmanager backends, at their own index": {
			spec: model.MeshSpec{MTLS: &model.MTLS{Backends: []model.Backend{
				{Name: "builtin", Type: model.BackendTypeBuiltin},
				certManager(cmmeta.IssuerReference{Name: "ca", Group: "cert-manager.io"}),
			}}},
			want: []string{"/spec/mtls/backends/1/conf/issuerRef/kind=Issuer"},
		},
		"no issuerRef object is left for validation": {
			spec: model.MeshSpec{MTLS: &model.MTLS{Backends: []model.Backend{
				{Name: "cm", Type: model.BackendTypeCertManager, CertManager: &model.CertManagerConf{}},
			}}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, c := range Mesh(tc.spec) {
				got = append(got, c.Pointer()+"="+c.Value)
			}
			if !reflect.DeepEqual(got, tc.want) {
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
