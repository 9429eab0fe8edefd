package check

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
)

func TestMigration(t *testing.T) {
	const group = "Mesh demo: "
	oldCA, oldObjs := caIssuer(t, "old-ca", now.Add(365*24*time.Hour))
	newCA, newObjs := caIssuer(t, "new-ca", now.Add(365*24*time.Hour))
	issuers := append(oldObjs, newObjs...)
	const oneBackend = `{"meshServices":{"mode":"Exclusive"},"mtls":{"enabledBackend":"cm","backends":[
		{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"old-ca"}}}]}}`
	const bothBackends = `{"meshServices":{"mode":"Exclusive"},"mtls":{"enabledBackend":"cm","backends":[
		{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"old-ca"}}},
		{"name":"cm-new","type":"certmanager","conf":{"issuerRef":{"name":"new-ca"}}}]}}`
	dp := func(name string) *kuma.DataplaneResource {
		return &kuma.DataplaneResource{
			ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, Labels: map[string]string{"app": name}},
			Mesh:       "demo",
			Spec:       []byte(`{"networking":{"inbound":[{"tags":{"kuma.io/service":"` + name + `"}}]}}`),
		}
	}
	ready := json.RawMessage(`{"conditions":[{"type":"Ready","status":"True","reason":"Ready","message":""}]}`)
	identity := func(selected map[string]string, status json.RawMessage) *kuma.MeshIdentityResource {
		mid := agentIdentity("demo-id", "new-ca")
		mid.Spec.Selector.Dataplane.MatchLabels = selected
		mid.Status = status
		return mid
	}
	extension := func(selected map[string]string) *kuma.MeshIdentityResource {
		mid := identity(selected, ready)
		mid.Annotations = nil
		mid.Spec.Provider = &kuma.Provider{Type: kuma.ProviderTypeExtension, Extension: &kuma.ProviderExtension{
			Name: kuma.CertManagerExtension, Config: json.RawMessage(`{"issuerRef":{"name":"new-ca","kind":"Issuer","group":"cert-manager.io"}}`)}}
		return mid
	}
	web := map[string]string{"app": "web"}
	all := map[string]string{}
	// The trust of a move done right: the new root as a backend of the
	// Mesh, the old one in a MeshTrust of the mesh's trust domain, and the
	// identity's own MeshTrust.
	trusted := []client.Object{meshTrust("legacy", "demo", oldCA), meshTrust("demo-id", "demo.default.mesh.local", newCA)}
	tests := map[string]struct {
		mesh  string
		objs  []client.Object
		wants map[string]want
	}{
		"nothing moved yet": {
			objs:  []client.Object{mesh("demo", oneBackend), dp("web"), dp("api")},
			wants: map[string]want{group + "migration": {Warn, "none of the 2 Dataplanes is selected by a Ready MeshIdentity: all get their certificates from Mesh.spec.mtls"}},
		},
		"an identity Kuma has not marked Ready moves nothing": {
			objs:  append([]client.Object{mesh("demo", bothBackends), dp("web"), dp("api"), identity(web, nil)}, trusted...),
			wants: map[string]want{group + "migration": {Warn, "none of the 2 Dataplanes"}},
		},
		"half moved, both roots trusted": {
			objs: append([]client.Object{mesh("demo", bothBackends), dp("web"), dp("api"), identity(web, ready)}, trusted...),
			wants: map[string]want{group + "migration": {Warn,
				"1 of the 2 Dataplanes are selected by a Ready MeshIdentity; still on Mesh.spec.mtls: team/api"}},
		},
		"half moved, the agent's workloads do not trust the old root": {
			objs: []client.Object{mesh("demo", bothBackends), dp("web"), dp("api"), identity(web, ready), meshTrust("demo-id", "demo.default.mesh.local", newCA)},
			wants: map[string]want{group + "migration": {Fail,
				"no MeshTrust of mesh demo trusts trust domain demo with the backend's root CN=old-ca, so the workloads of MeshIdentity demo-id reject"}},
		},
		"half moved, the backend's workloads do not trust the new root": {
			objs: append([]client.Object{mesh("demo", oneBackend), dp("web"), dp("api"), identity(web, ready)}, trusted...),
			wants: map[string]want{group + "migration": {Fail,
				"no backend of Mesh demo has the root CN=new-ca of MeshIdentity demo-id's issuer"}},
		},
		"Kong Mesh's control plane trusts the old root for its extension's workloads": {
			objs:  []client.Object{mesh("demo", bothBackends), dp("web"), dp("api"), extension(web), meshTrust("demo-id", "demo.default.mesh.local", newCA)},
			wants: map[string]want{group + "migration": {Warn, "1 of the 2 Dataplanes are selected by a Ready MeshIdentity"}},
		},
		"one still waits for its identity to be Ready": {
			objs: append([]client.Object{mesh("demo", bothBackends), dp("web"), dp("api"), identity(web, ready),
				func() client.Object {
					mid := agentIdentity("api-id", "new-ca")
					mid.Spec.Selector.Dataplane.MatchLabels = map[string]string{"app": "api"}
					return mid
				}()}, trusted...),
			wants: map[string]want{group + "migration": {Warn, "still on Mesh.spec.mtls: team/api (MeshIdentity api-id not Ready)"}},
		},
		"all moved": {
			objs: append([]client.Object{mesh("demo", bothBackends), dp("web"), dp("api"), identity(all, ready)}, trusted...),
			wants: map[string]want{group + "migration": {Pass,
				"all 2 Dataplanes are selected by a Ready MeshIdentity (demo-id): Mesh.spec.mtls can be removed"}},
		},
		"another mesh's Dataplanes do not count": {
			objs: append([]client.Object{mesh("demo", bothBackends), dp("web"), identity(all, ready),
				func() client.Object { d := dp("api"); d.Mesh = "other"; return d }()}, trusted...),
			wants: map[string]want{group + "migration": {Pass, "all 1 Dataplanes"}},
		},
		"a mesh that does not exist": {
			mesh:  "gone",
			objs:  []client.Object{mesh("demo", oneBackend)},
			wants: map[string]want{"Mesh gone: Mesh": {Fail, "Mesh gone does not exist"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := newChecker(append(tc.objs, issuers...)...)
			c.Mesh = tc.mesh
			r := &Report{}
			if err := c.Identities(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			assertResults(t, r, tc.wants)
		})
	}
}

// TestMeshScope: `meshcert check mesh` reports on that mesh alone.
func TestMeshScope(t *testing.T) {
	_, issuer := caIssuer(t, "old-ca", now.Add(365*24*time.Hour))
	backend := `{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"old-ca"}}}]}}`
	otherID := agentIdentity("other-id", "old-ca")
	otherID.Labels[kuma.MeshLabel] = "other"
	c := newChecker(append(issuer, mesh("demo", backend), mesh("other", backend), otherID)...)
	c.Mesh = "demo"
	r := &Report{}
	if err := c.Identities(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	for _, res := range r.Results {
		if res.Group != "Mesh demo, backend cm" && res.Group != "Mesh demo" {
			t.Errorf("a check of another mesh: %+v", res)
		}
	}
	if len(r.Results) == 0 {
		t.Error("no check of mesh demo")
	}
}
