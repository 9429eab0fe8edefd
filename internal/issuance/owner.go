package issuance

import (
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// OwnerKind is what a certificate is issued for.
type OwnerKind string

// The owners of CertificateRequests.
const (
	// OwnerDataplane is a dataplane's certificate: Scope and Name are the
	// Dataplane's namespace and name.
	OwnerDataplane OwnerKind = "Dataplane"
	// OwnerProbe is a probe that learns a backend's root: Scope is the mesh,
	// Name the backend.
	OwnerProbe OwnerKind = "Probe"
	// OwnerMeshIdentity is a probe that learns a MeshIdentity issuer's root:
	// Scope and Name are the MeshIdentity's namespace and name.
	OwnerMeshIdentity OwnerKind = "MeshIdentity"
	// OwnerAgent is an identity a node agent serves: Scope is the node, Name
	// the SPIFFE ID.
	OwnerAgent OwnerKind = "Agent"
)

// Owner is who asks for a certificate: the in-flight place, the backoff and
// the cleanup are per owner.
type Owner struct {
	Kind        OwnerKind
	Scope, Name string
}

// DataplaneOwner is the owner of a dataplane's certificate.
func DataplaneOwner(dataplane types.NamespacedName) Owner {
	return Owner{Kind: OwnerDataplane, Scope: dataplane.Namespace, Name: dataplane.Name}
}

// ProbeOwner is the owner of the probe of a mesh's backend.
func ProbeOwner(mesh, backend string) Owner {
	return Owner{Kind: OwnerProbe, Scope: mesh, Name: backend}
}

// MeshIdentityOwner is the owner of a MeshIdentity's probe.
func MeshIdentityOwner(identity types.NamespacedName) Owner {
	return Owner{Kind: OwnerMeshIdentity, Scope: identity.Namespace, Name: identity.Name}
}

// AgentOwner is the owner of an identity a node's agent serves.
func AgentOwner(node, spiffeID string) Owner {
	return Owner{Kind: OwnerAgent, Scope: node, Name: spiffeID}
}

// NamespacedName is the object a dataplane's or a MeshIdentity's owner
// stands for.
func (o Owner) NamespacedName() types.NamespacedName {
	return types.NamespacedName{Namespace: o.Scope, Name: o.Name}
}

// String is the owner as OwnerAnnotation holds it, "<kind>:<scope>/<name>",
// which also goes into the request's name.
func (o Owner) String() string { return string(o.Kind) + ":" + o.Scope + "/" + o.Name }

// parseOwner reads an owner written by String. A scope holds no slash (a
// namespace, a mesh or a node), so the name is all after the first.
func parseOwner(s string) (Owner, bool) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Owner{}, false
	}
	scope, name, ok := strings.Cut(rest, "/")
	if !ok {
		return Owner{}, false
	}
	switch o := (Owner{Kind: OwnerKind(kind), Scope: scope, Name: name}); o.Kind {
	case OwnerDataplane, OwnerProbe, OwnerMeshIdentity, OwnerAgent:
		return o, true
	}
	return Owner{}, false
}

// OwnerOf is the owner a CertificateRequest was made for, as its
// OwnerAnnotation says; false when it names none.
func OwnerOf(o client.Object) (Owner, bool) {
	return parseOwner(o.GetAnnotations()[OwnerAnnotation])
}
