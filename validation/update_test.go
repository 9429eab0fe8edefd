package validation

import (
	"errors"
	"strings"
	"testing"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/google/go-cmp/cmp"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
)

func TestValidateMeshUpdate(t *testing.T) {
	backend := func(name string) kuma.Backend {
		return kuma.Backend{Name: name, Type: kuma.BackendTypeCertManager, CertManager: &kuma.CertManagerConf{
			HasIssuerRef: true, IssuerRef: cmmeta.IssuerReference{Name: "ca", Kind: "ClusterIssuer"},
		}}
	}
	mesh := func(enabled string, names ...string) kuma.Mesh {
		m := kuma.Mesh{Name: "demo", Spec: kuma.MeshSpec{MTLS: &kuma.MTLS{EnabledBackend: enabled}}}
		for _, n := range names {
			m.Spec.MTLS.Backends = append(m.Spec.MTLS.Backends, backend(n))
		}
		return m
	}
	cluster := fakeLookup{
		issuers: map[cmmeta.IssuerReference]lookup.IssuerState{{Name: "ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}: {Ready: true}},
		issued:  map[string]int{"demo/ca-1": 37},
	}
	const forbidden = `spec.mtls.enabledBackend: Forbidden: backend "ca-2" is added by this same update`
	tests := map[string]struct {
		old, new     kuma.Mesh
		unsafe       bool
		lookup       lookup.Lookup
		wantErr      string
		wantWarnings []string
	}{
		"step 1: add a backend, keep the enabled one": {old: mesh("ca-1", "ca-1"), new: mesh("ca-1", "ca-1", "ca-2")},
		"step 2: switch to a backend added before":    {old: mesh("ca-1", "ca-1", "ca-2"), new: mesh("ca-2", "ca-1", "ca-2")},
		"step 3: remove the old backend, all reissued": {
			old: mesh("ca-2", "ca-1", "ca-2"), new: mesh("ca-2", "ca-2"),
			lookup: fakeLookup{issuers: cluster.issuers},
		},
		"one-step switch is rejected":                     {old: mesh("ca-1", "ca-1"), new: mesh("ca-2", "ca-1", "ca-2"), wantErr: forbidden},
		"one-step switch allowed in an emergency":         {old: mesh("ca-1", "ca-1"), new: mesh("ca-2", "ca-1", "ca-2"), unsafe: true},
		"turning mTLS on with a new backend is no switch": {old: mesh("", "ca-1"), new: mesh("ca-2", "ca-1", "ca-2")},
		"a mesh that had no mtls":                         {old: kuma.Mesh{Name: "demo"}, new: mesh("ca-1", "ca-1")},
		"enabling a backend that is nowhere is another error": {
			old: mesh("ca-1", "ca-1"), new: mesh("ca-9", "ca-1"),
			wantErr: `spec.mtls.enabledBackend: Invalid value: "ca-9": has to be set to one of the backends in the mesh`,
		},
		"premature removal warns with the count": {
			old: mesh("ca-1", "ca-1", "ca-2"), new: mesh("ca-2", "ca-2"),
			wantWarnings: []string{"spec.mtls.backends: backend ca-1 still issued the certificates of 37 dataplanes: removing it now makes their peers reject them until they are reissued"},
		},
		"a count that fails warns so": {
			old: mesh("ca-1", "ca-1", "ca-2"), new: mesh("ca-2", "ca-2"),
			lookup:       fakeLookup{issuers: cluster.issuers, err: errors.New("cache down")},
			wantErr:      "",
			wantWarnings: []string{`spec.mtls.backends[0].conf.issuerRef: could not look up ClusterIssuer ca: cache down`, `spec.mtls.backends: could not count the certificates of backend "ca-1": cache down`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := Env{Env: lookup.Env{SystemNamespace: "kong-mesh-system", Now: now, Lookup: cluster}, AllowUnsafeCASwitch: tc.unsafe}
			if tc.lookup != nil {
				env.Lookup = tc.lookup
			}
			res := ValidateMeshUpdate(tc.old, tc.new, env)
			errs := strings.Join(errorStrings(res.Errors), "\n")
			if (tc.wantErr == "") != (errs == "") || !strings.HasPrefix(errs, tc.wantErr) {
				t.Errorf("errors %q, want %q", errs, tc.wantErr)
			}
			if diff := cmp.Diff(tc.wantWarnings, res.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}
