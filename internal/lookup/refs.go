package lookup

import (
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
)

// Lookup answers questions about cluster objects. meshcert serves it from its
// informer-fed Index; tests serve it from maps. A nil object with
// a nil error means "not found"; an error means the lookup itself failed.
type Lookup interface {
	// SystemSecret returns the Secret of that name in the system namespace.
	SystemSecret(name string) (*corev1.Secret, error)
	// Issuer returns the state of the Issuer (in the system namespace) or
	// ClusterIssuer that a defaulted cert-manager.io issuerRef names.
	Issuer(ref cmmeta.IssuerReference) (*IssuerState, error)
	// IssuedBy counts the dataplanes of a mesh whose current certificate,
	// as meshcert delivered it, came from the backend.
	IssuedBy(mesh, backend string) (int, error)
	// MeshServicesMode returns the spec.meshServices.mode of the Mesh of
	// that name ("" when it sets none), and whether the Mesh exists.
	MeshServicesMode(mesh string) (mode string, found bool, err error)
}

// IssuerState is what meshcert needs of an Issuer or ClusterIssuer.
type IssuerState struct {
	Ready   bool
	Reason  string
	Message string
	// ResourceVersion changes with the issuer: a change ends a backoff.
	ResourceVersion string
}

// Env is where references are resolved: the system namespace, the clock for
// certificate validity, and the lookup.
type Env struct {
	SystemNamespace string
	Now             time.Time
	Lookup          Lookup
}
