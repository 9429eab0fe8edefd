package kuma

import (
	"testing"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func ptr(s string) *string { return &s }

func TestParseMeshSpec(t *testing.T) {
	tests := map[string]struct {
		json     string
		want     MeshSpec
		wantErrs []string
	}{
		"absent spec": {json: ``},
		"null spec":   {json: `null`},
		"no mtls":     {json: `{"logging":{}}`},
		"certmanager backend": {
			json: `{"mtls":{"enabledBackend":"cm","skipValidation":true,"backends":[{"name":"cm","type":"certmanager","mode":"STRICT",
				"dpCert":{"rotation":{"expiration":"1d"},"requestTimeout":"5s"},
				"conf":{"issuerRef":{"name":"ca","kind":"Issuer","group":"cert-manager.io","extra":1},"caCert":{"secret":"s"}}}]}}`,
			want: MeshSpec{MTLS: &MTLS{EnabledBackend: "cm", SkipValidation: true, Backends: []Backend{{
				Name: "cm", Type: "certmanager", Mode: "STRICT",
				DpCert: DpCert{Expiration: "1d", RequestTimeout: "5s"},
				CertManager: &CertManagerConf{
					HasIssuerRef: true,
					IssuerRef:    cmmetaRef("ca", "Issuer", "cert-manager.io"),
					CACert:       &DataSource{Secret: ptr("s")},
				},
			}}}},
		},
		"other backend types have no certmanager conf": {
			json: `{"mtls":{"backends":[{"name":"b","type":"builtin","conf":{"issuerRef":"ignored"}}]}}`,
			want: MeshSpec{MTLS: &MTLS{Backends: []Backend{{Name: "b", Type: "builtin"}}}},
		},
		"inline is decoded from base64": {
			json: `{"mtls":{"backends":[{"type":"certmanager","conf":{"caCert":{"inline":"aGk="}}}]}}`,
			want: MeshSpec{MTLS: &MTLS{Backends: []Backend{{Type: "certmanager", CertManager: &CertManagerConf{
				CACert: &DataSource{Inline: []byte("hi"), HasInline: true},
			}}}}},
		},
		"empty sources still count as given": {
			json: `{"mtls":{"backends":[{"type":"certmanager","conf":{"caCert":{"secret":"","inlineString":""}}}]}}`,
			want: MeshSpec{MTLS: &MTLS{Backends: []Backend{{Type: "certmanager", CertManager: &CertManagerConf{
				CACert: &DataSource{Secret: ptr(""), InlineString: ptr("")},
			}}}}},
		},
		"wrong types are reported with full paths": {
			json: `{"mtls":{"enabledBackend":1,"backends":[{"name":["x"],"type":"certmanager","dpCert":"1d","conf":{"issuerRef":{"name":true},"caCert":{"inline":"%%%"}}},"str"]}}`,
			want: MeshSpec{MTLS: &MTLS{Backends: []Backend{
				{Type: "certmanager", CertManager: &CertManagerConf{HasIssuerRef: true, CACert: &DataSource{HasInline: true, Inline: []byte{}}}, Malformed: true},
				{Malformed: true},
			}}},
			wantErrs: []string{
				"spec.mtls.enabledBackend: Invalid value: must be a string, not a number",
				"spec.mtls.backends[0].name: Invalid value: must be a string, not a list",
				"spec.mtls.backends[0].dpCert: Invalid value: must be an object, not a string",
				"spec.mtls.backends[0].conf.issuerRef.name: Invalid value: must be a string, not a boolean",
				"spec.mtls.backends[0].conf.caCert.inline: Invalid value: must be base64-encoded PEM",
				"spec.mtls.backends[1]: Invalid value: must be an object, not a string",
			},
		},
		"spec that is not an object": {
			json:     `"mesh"`,
			wantErrs: []string{"spec: Invalid value: must be an object, not a string"},
		},
		"backends that is not a list": {
			json:     `{"mtls":{"backends":{"name":"x"}}}`,
			want:     MeshSpec{MTLS: &MTLS{}},
			wantErrs: []string{"spec.mtls.backends: Invalid value: must be a list, not an object"},
		},
		"not JSON": {
			json:     `{`,
			wantErrs: []string{"spec: Invalid value: is not valid JSON: unexpected end of JSON input"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, errs := ParseMeshSpec([]byte(tc.json))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantErrs, errorStrings(errs)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func errorStrings(errs field.ErrorList) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func cmmetaRef(name, kind, group string) cmmeta.IssuerReference {
	return cmmeta.IssuerReference{Name: name, Kind: kind, Group: group}
}

func TestMeshServicesMode(t *testing.T) {
	tests := map[string]struct {
		spec string
		want string
	}{
		"Exclusive":         {spec: `{"meshServices":{"mode":"Exclusive"}}`, want: "Exclusive"},
		"Disabled":          {spec: `{"meshServices":{"mode":"Disabled"}}`, want: "Disabled"},
		"no meshServices":   {spec: `{"mtls":{}}`},
		"no spec":           {},
		"not a string":      {spec: `{"meshServices":{"mode":3}}`},
		"meshServices null": {spec: `{"meshServices":null}`},
		"not JSON":          {spec: `{`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := MeshServicesMode([]byte(tc.spec)); got != tc.want {
				t.Errorf("MeshServicesMode(%s) = %q, want %q", tc.spec, got, tc.want)
			}
		})
	}
}
