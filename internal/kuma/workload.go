package kuma

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AgentIdentity is the identity Kuma gives a Dataplane, when it is one that
// meshcert's node agent serves.
type AgentIdentity struct {
	MeshIdentity *MeshIdentityResource
	TrustDomain  string
	SpiffeID     string
}

// AgentIdentityOf computes a Dataplane's identity as Kuma does: the
// MeshIdentity Kuma selects among identities (every MeshIdentity, whatever
// serves it), its trust domain from its own label view, and the SPIFFE ID
// from the Dataplane's, as Kuma's Spire provider renders them (v2.14.3,
// pkg/core/resources/apis/meshidentity/providers/spire/spire.go). It fails,
// saying why, when no identity selects the Dataplane or when Kuma's choice
// is not one meshcert's agent serves.
func AgentIdentityOf(identities []*MeshIdentityResource, dp *DataplaneResource, localZone string) (AgentIdentity, error) {
	mesh, labels := dp.MeshName(), LabelView(dp)
	mid := SelectMeshIdentity(identities, mesh, labels)
	if mid == nil {
		return AgentIdentity{}, fmt.Errorf("no MeshIdentity selects Dataplane %s/%s of mesh %q", dp.Namespace, dp.Name, mesh)
	}
	if mid.ServedBy() != ServedByAgent {
		return AgentIdentity{}, fmt.Errorf("Kuma gives Dataplane %s/%s the identity of MeshIdentity %s, which meshcert does not serve", dp.Namespace, dp.Name, mid.Name)
	}
	td, err := RenderTrustDomain(mid.Spec.SpiffeID.TrustDomainTemplate(), mesh, localZone, LabelView(mid))
	if err != nil {
		return AgentIdentity{}, fmt.Errorf("MeshIdentity %s: the trust domain: %w", mid.Name, err)
	}
	id, err := RenderSpiffeID(td, mid.Spec.SpiffeID.PathTemplate(), labels)
	if err != nil {
		return AgentIdentity{}, fmt.Errorf("MeshIdentity %s: the SPIFFE ID of Dataplane %s/%s: %w", mid.Name, dp.Namespace, dp.Name, err)
	}
	return AgentIdentity{MeshIdentity: mid, TrustDomain: td, SpiffeID: id}, nil
}

// CheckOwnedByPod checks that a Dataplane is the Pod's: Kuma's pod converter
// makes the Pod its controller (SetControllerReference), and its label view
// must name the Pod's namespace and service account, which a pod author can
// otherwise choose (Kuma sets k8s.kuma.io/namespace only where the Pod's
// labels do not).
func CheckOwnedByPod(dp *DataplaneResource, pod *corev1.Pod) error {
	owner := metav1.GetControllerOf(dp)
	if owner == nil || owner.APIVersion != "v1" || owner.Kind != "Pod" || owner.UID != pod.UID {
		return fmt.Errorf("Dataplane %s/%s is not controlled by pod %s (UID %s)", dp.Namespace, dp.Name, pod.Name, pod.UID)
	}
	labels := LabelView(dp)
	if ns := labels[NamespaceLabel]; ns != pod.Namespace {
		return fmt.Errorf("Dataplane %s/%s names namespace %q (%s), not its Pod's", dp.Namespace, dp.Name, ns, NamespaceLabel)
	}
	if sa := labels[ServiceAccountLabel]; sa != pod.Spec.ServiceAccountName {
		return fmt.Errorf("Dataplane %s/%s names service account %q (%s), not its Pod's %q", dp.Namespace, dp.Name, sa, ServiceAccountLabel, pod.Spec.ServiceAccountName)
	}
	return nil
}

// MeshIdentityPointers points at each item of a list, for AgentIdentityOf.
func MeshIdentityPointers(items []MeshIdentityResource) []*MeshIdentityResource {
	out := make([]*MeshIdentityResource, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}
