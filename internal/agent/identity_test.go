package agent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// unixNode is the node of the unix attestor's agent in these tests.
const unixNode = "vm-1"

func unixDataplane(name, uid string, labels map[string]string) *kuma.DataplaneResource {
	return &kuma.DataplaneResource{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "vms", Labels: labels, Annotations: map[string]string{kuma.UnixUIDAnnotation: uid, kuma.NodeNameAnnotation: unixNode}},
		Mesh:       "billing",
	}
}

// onNode binds a Dataplane to node, or to none for "".
func onNode(dp *kuma.DataplaneResource, node string) *kuma.DataplaneResource {
	delete(dp.Annotations, kuma.NodeNameAnnotation)
	if node != "" {
		dp.Annotations[kuma.NodeNameAnnotation] = node
	}
	return dp
}

// withAnnotations adds annotations to a Dataplane, as Kuma's store keeps the
// service account and workload.
func withAnnotations(dp *kuma.DataplaneResource, annotations map[string]string) *kuma.DataplaneResource {
	for k, v := range annotations {
		dp.Annotations[k] = v
	}
	return dp
}

// withTemplates gives an identity its own templates (nil: Kuma's default)
// and labels of its own.
func withTemplates(mid *kuma.MeshIdentityResource, td, path *string, labels map[string]string) *kuma.MeshIdentityResource {
	mid.Spec.SpiffeID = &kuma.SpiffeID{TrustDomain: td, Path: path}
	for k, v := range labels {
		mid.Labels[k] = v
	}
	return mid
}

func spireIdentity(name string, annotations, matchLabels map[string]string) *kuma.MeshIdentityResource {
	path, td := "/workload/{{ .Workload }}", "billing.example.com"
	return &kuma.MeshIdentityResource{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kong-mesh-system", Labels: map[string]string{"kuma.io/mesh": "billing"}, Annotations: annotations},
		Spec: kuma.MeshIdentitySpec{
			Selector: &kuma.IdentitySelector{Dataplane: &kuma.LabelSelector{MatchLabels: matchLabels}},
			SpiffeID: &kuma.SpiffeID{TrustDomain: &td, Path: &path},
			Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire},
		},
	}
}

// TestResolveWithTheUnixAttestor: the caller is this process, whose Unix
// user the Dataplanes name.
func TestResolveWithTheUnixAttestor(t *testing.T) {
	uid := "4242"
	invoices := map[string]string{"app": "invoices", kuma.WorkloadLabel: "invoices"}
	served := map[string]string{kuma.IssuerNameAnnotation: "billing-ca", kuma.DurationAnnotation: "2h", kuma.KeyAlgorithmAnnotation: "ed25519"}
	tests := map[string]struct {
		objects    []client.Object
		want       *Identity
		notEntitle string
	}{
		"its dataplane's identity": {
			objects: []client.Object{unixDataplane("invoices", uid, invoices), spireIdentity("billing", served, map[string]string{"app": "invoices"})},
			want: &Identity{SpiffeID: "spiffe://billing.example.com/workload/invoices", TrustDomain: "billing.example.com", Mesh: "billing",
				Duration: 2 * time.Hour, KeyAlgorithm: issuance.Ed25519},
		},
		"no dataplane of its user": {
			objects:    []client.Object{unixDataplane("invoices", "1000", invoices), spireIdentity("billing", served, map[string]string{})},
			notEntitle: `no Dataplane is annotated meshcert.io/unix-uid: "4242" and meshcert.io/node-name: "vm-1"`,
		},
		// Whoever writes a Dataplane for another VM must not choose a user
		// of this one.
		"its user's dataplane, of another node": {
			objects:    []client.Object{onNode(unixDataplane("invoices", uid, invoices), "vm-2"), spireIdentity("billing", served, map[string]string{})},
			notEntitle: `no Dataplane is annotated meshcert.io/unix-uid: "4242" and meshcert.io/node-name: "vm-1"`,
		},
		"its user's dataplane, of no node": {
			objects:    []client.Object{onNode(unixDataplane("invoices", uid, invoices), ""), spireIdentity("billing", served, map[string]string{})},
			notEntitle: `no Dataplane is annotated meshcert.io/unix-uid: "4242" and meshcert.io/node-name: "vm-1"`,
		},
		"its user's dataplane on this node, another's on another node": {
			objects: []client.Object{unixDataplane("invoices", uid, invoices), onNode(unixDataplane("elsewhere", uid, invoices), "vm-2"),
				spireIdentity("billing", served, map[string]string{"app": "invoices"})},
			want: &Identity{SpiffeID: "spiffe://billing.example.com/workload/invoices", TrustDomain: "billing.example.com", Mesh: "billing",
				Duration: 2 * time.Hour, KeyAlgorithm: issuance.Ed25519},
		},
		"two dataplanes of one user": {
			objects:    []client.Object{unixDataplane("a", uid, invoices), unixDataplane("b", uid, invoices), spireIdentity("billing", served, map[string]string{})},
			notEntitle: "2 Dataplanes are annotated",
		},
		"no identity selects it": {
			objects:    []client.Object{unixDataplane("invoices", uid, invoices), spireIdentity("billing", served, map[string]string{"app": "orders"})},
			notEntitle: `no MeshIdentity selects Dataplane vms/invoices of mesh "billing"`,
		},
		"an identity meshcert does not serve": {
			objects:    []client.Object{unixDataplane("invoices", uid, invoices), spireIdentity("billing", nil, map[string]string{"app": "invoices"})},
			notEntitle: `Kuma gives Dataplane vms/invoices the identity of MeshIdentity billing, which meshcert does not serve`,
		},
		// Kuma selects among every MeshIdentity of the mesh (v2.14.3,
		// helpers.go BestMatched): a served one that loses gives nothing.
		"Kuma's choice is not meshcert's, though meshcert's selects it too": {
			objects: []client.Object{unixDataplane("invoices", uid, invoices), spireIdentity("billing", served, map[string]string{"app": "invoices"}),
				spireIdentity("bundled", nil, map[string]string{"app": "invoices", kuma.WorkloadLabel: "invoices"})},
			notEntitle: `the identity of MeshIdentity bundled, which meshcert does not serve`,
		},
		"a tie goes to the smaller <name>.<namespace>, as in Kuma's store": {
			objects: []client.Object{unixDataplane("invoices", uid, invoices),
				withTemplates(spireIdentity("web", served, map[string]string{"app": "invoices"}), nil, ptr.To("/from/web"), nil),
				withTemplates(spireIdentity("web-v2", served, map[string]string{"app": "invoices"}), nil, ptr.To("/from/web-v2"), nil)},
			want: &Identity{SpiffeID: "spiffe://billing.default.mesh.local/from/web-v2", TrustDomain: "billing.default.mesh.local", Mesh: "billing",
				Duration: 2 * time.Hour, KeyAlgorithm: issuance.Ed25519},
		},
		"the trust domain reads the MeshIdentity's zone and labels, not the Dataplane's": {
			objects: []client.Object{unixDataplane("invoices", uid, map[string]string{"app": "invoices", kuma.WorkloadLabel: "invoices", kuma.ZoneLabel: "west", "tier": "gold"}),
				withTemplates(spireIdentity("billing", served, map[string]string{"app": "invoices"}), ptr.To(`{{ label "tier" }}.{{ .Mesh }}.{{ .Zone }}.mesh.local`), ptr.To("/w/{{ .Workload }}"),
					map[string]string{kuma.ZoneLabel: "east", "tier": "silver"})},
			want: &Identity{SpiffeID: "spiffe://silver.billing.east.mesh.local/w/invoices", TrustDomain: "silver.billing.east.mesh.local", Mesh: "billing",
				Duration: 2 * time.Hour, KeyAlgorithm: issuance.Ed25519},
		},
		// Kuma v2.14.3 reads the MeshIdentity's label view too, where its
		// webhook keeps the display name as an annotation.
		"the trust domain's label reads the MeshIdentity's display name": {
			objects: []client.Object{unixDataplane("invoices", uid, invoices),
				withTemplates(spireIdentity("billing", served, map[string]string{"app": "invoices"}), ptr.To(`{{ label "kuma.io/display-name" }}.{{ .Zone }}.example`), ptr.To("/workload/{{ .Workload }}"),
					map[string]string{kuma.ZoneLabel: "zone-1"})},
			want: &Identity{SpiffeID: "spiffe://billing.zone-1.example/workload/invoices", TrustDomain: "billing.zone-1.example", Mesh: "billing",
				Duration: 2 * time.Hour, KeyAlgorithm: issuance.Ed25519},
		},
		"the service account from its annotation, as Kuma's store keeps it": {
			objects: []client.Object{
				withAnnotations(unixDataplane("invoices", uid, map[string]string{"app": "invoices", kuma.NamespaceLabel: "vms"}),
					map[string]string{kuma.ServiceAccountLabel: "invoicer", kuma.WorkloadLabel: "invoicer"}),
				withTemplates(spireIdentity("billing", served, map[string]string{"app": "invoices", kuma.ServiceAccountLabel: "invoicer"}), nil, nil,
					map[string]string{kuma.ZoneLabel: "east"})},
			want: &Identity{SpiffeID: "spiffe://billing.east.mesh.local/ns/vms/sa/invoicer", TrustDomain: "billing.east.mesh.local", Mesh: "billing",
				Duration: 2 * time.Hour, KeyAlgorithm: issuance.Ed25519},
		},
		"a path template its labels cannot fill": {
			objects:    []client.Object{unixDataplane("invoices", uid, map[string]string{"app": "invoices"}), spireIdentity("billing", served, map[string]string{"app": "invoices"})},
			notEntitle: "the SPIFFE ID of Dataplane vms/invoices",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			scheme := runtime.NewScheme()
			if err := kuma.AddToScheme(scheme); err != nil {
				t.Fatal(err)
			}
			c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(tc.objects...).
				WithIndex(&kuma.DataplaneResource{}, UnixUIDIndex, unixUIDKeys).Build()
			procfs := attest.Procfs{Root: "/proc"}
			start, err := procfs.StartTime(int32(os.Getpid()))
			if err != nil {
				t.Fatal(err)
			}
			r := &Resolver{Attestor: &UnixAttestor{Dataplanes: c, Node: unixNode}, Cache: c, SystemNamespace: "kong-mesh-system", Zone: "default",
				KeyAlgorithm: issuance.ECDSAP256, Procfs: procfs}
			got, err := r.Resolve(context.Background(), attest.Caller{PID: int32(os.Getpid()), UID: 4242, StartTime: start})
			var ne *NotEntitled
			switch {
			case tc.notEntitle != "":
				if !errors.As(err, &ne) || !strings.Contains(ne.Reason, tc.notEntitle) {
					t.Fatalf("err = %v, want NotEntitled with %q", err, tc.notEntitle)
				}
			case err != nil:
				t.Fatal(err)
			default:
				if got.SpiffeID != tc.want.SpiffeID || got.TrustDomain != tc.want.TrustDomain || got.Mesh != tc.want.Mesh ||
					got.Duration != tc.want.Duration || got.KeyAlgorithm != tc.want.KeyAlgorithm {
					t.Errorf("got %+v, want %+v", got, tc.want)
				}
				if got.IssuerRef.Name != "billing-ca" || got.IssuerRef.Kind != "Issuer" || got.IssuerRef.Group != "cert-manager.io" {
					t.Errorf("issuer %+v, want billing-ca with the defaults", got.IssuerRef)
				}
			}
		})
	}

	t.Run("a PID that now belongs to another process", func(t *testing.T) {
		scheme := runtime.NewScheme()
		_ = kuma.AddToScheme(scheme)
		c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(unixDataplane("invoices", uid, invoices), spireIdentity("billing", served, map[string]string{})).
			WithIndex(&kuma.DataplaneResource{}, UnixUIDIndex, unixUIDKeys).Build()
		r := &Resolver{Attestor: &UnixAttestor{Dataplanes: c, Node: unixNode}, Cache: c, SystemNamespace: "kong-mesh-system", Zone: "default", Procfs: attest.Procfs{Root: "/proc"}}
		_, err := r.Resolve(context.Background(), attest.Caller{PID: int32(os.Getpid()), UID: 4242, StartTime: 1})
		var ne *NotEntitled
		if !errors.As(err, &ne) || !strings.Contains(ne.Reason, "PID belongs to another process") {
			t.Errorf("err = %v, want NotEntitled for a reused PID", err)
		}
	})
}
