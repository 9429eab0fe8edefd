package kuma

// Labels and annotations meshcert puts on the Secrets and CertificateRequests
// it creates. The caches select them by ManagedByLabel; the annotations carry
// exact names, since label values are limited to 63 characters.
const (
	ManagedByLabel               = "app.kubernetes.io/managed-by"
	ManagedByValue               = "meshcert"
	ManagedMeshLabel             = "meshcert.io/mesh"
	DataplaneNamespaceLabel      = "meshcert.io/dataplane-namespace"
	DataplaneNameLabel           = "meshcert.io/dataplane-name"
	MeshAnnotation               = "meshcert.io/mesh"
	BackendAnnotation            = "meshcert.io/backend"
	DataplaneNamespaceAnnotation = "meshcert.io/dataplane-namespace"
	DataplaneNameAnnotation      = "meshcert.io/dataplane-name"
	IdentityHashAnnotation       = "meshcert.io/identity-hash"
	IssuerHashAnnotation         = "meshcert.io/issuer-hash"
	NotAfterAnnotation           = "meshcert.io/not-after"

	// CAKey is the trust bundle's key in a delivered Secret, as cert-manager
	// names it.
	CAKey = "ca.crt"
)

// OriginLabel says where a policy was written. A zone control plane of a
// federated deployment refuses a MeshTrust or MeshIdentity in its system
// namespace without OriginLabel: OriginZone (v2.14.3,
// pkg/plugins/runtime/k8s/webhooks/resourceadmissionchecker.go).
const (
	OriginLabel = "kuma.io/origin"
	OriginZone  = "zone"
)
