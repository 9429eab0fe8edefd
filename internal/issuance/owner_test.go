package issuance

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestOwnerAnnotation(t *testing.T) {
	tests := map[string]struct {
		owner Owner
		// annotation is the owner as CertificateRequests already in clusters
		// hold it: it must not change.
		annotation string
	}{
		"a dataplane":     {owner: DataplaneOwner(types.NamespacedName{Namespace: "described", Name: "web"}), annotation: "Dataplane:described/web"},
		"a backend probe": {owner: ProbeOwner("default", "ca-1"), annotation: "Probe:default/ca-1"},
		"a MeshIdentity":  {owner: MeshIdentityOwner(types.NamespacedName{Namespace: "kuma-system", Name: "identity"}), annotation: "MeshIdentity:kuma-system/identity"},
		"an agent's identity, whose name holds slashes": {
			owner:      AgentOwner("node-1", "spiffe://default.default.mesh.local/ns/app/sa/web"),
			annotation: "Agent:node-1/spiffe://default.default.mesh.local/ns/app/sa/web",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.owner.String(); got != tc.annotation {
				t.Fatalf("String() = %q, want %q", got, tc.annotation)
			}
			obj := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{OwnerAnnotation: tc.annotation}}}
			got, ok := OwnerOf(obj)
			if !ok || got != tc.owner {
				t.Fatalf("OwnerOf(%q) = %+v, %v; want %+v", tc.annotation, got, ok, tc.owner)
			}
		})
	}
}

func TestOwnerOfRefuses(t *testing.T) {
	tests := map[string]string{
		"no annotation":  "",
		"no kind":        "default/web",
		"no scope":       "Dataplane:web",
		"an unknown one": "Certificate:default/web",
	}
	for name, annotation := range tests {
		t.Run(name, func(t *testing.T) {
			obj := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{OwnerAnnotation: annotation}}}
			if got, ok := OwnerOf(obj); ok {
				t.Fatalf("OwnerOf(%q) = %+v, want none", annotation, got)
			}
		})
	}
}
