// Package lookup answers validation's questions about cluster objects from an
// informer cache, never from the API server. The webhook and the reconciler
// both read through it.
package lookup

import (
	"context"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/model"
	"github.com/meshcert/meshcert/validation"
)

// Cache serves validation.Lookup from an informer cache.
type Cache struct {
	Ctx             context.Context
	Cache           client.Reader
	SystemNamespace string
}

var _ validation.Lookup = Cache{}

// SystemSecret implements validation.Lookup.
func (l Cache) SystemSecret(name string) (*corev1.Secret, error) {
	var s corev1.Secret
	if err := l.Cache.Get(l.Ctx, types.NamespacedName{Namespace: l.SystemNamespace, Name: name}, &s); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return &s, nil
}

// Issuer implements validation.Lookup.
func (l Cache) Issuer(ref cmmeta.IssuerReference) (*validation.IssuerState, error) {
	iss, err := l.GenericIssuer(ref)
	if iss == nil || err != nil {
		return nil, err
	}
	state := IssuerReadiness(iss.GetStatus())
	return &state, nil
}

// IssuedByIndex indexes meshcert's Secrets by mesh and issuing backend.
const IssuedByIndex = "meshcert.io/issued-by"

// IssuedByKey is the IssuedByIndex value of a Secret: "mesh/backend" for
// the Secrets meshcert delivered, none for others.
func IssuedByKey(o client.Object) []string {
	if o.GetLabels()[model.ManagedByLabel] != model.ManagedByValue {
		return nil
	}
	a := o.GetAnnotations()
	return []string{a[model.MeshAnnotation] + "/" + a[model.BackendAnnotation]}
}

// IssuedBy implements validation.Lookup, from the IssuedByIndex.
func (l Cache) IssuedBy(mesh, backend string) (int, error) {
	var secrets corev1.SecretList
	// Counting only: no need to copy the Secrets out of the cache.
	if err := l.Cache.List(l.Ctx, &secrets, client.MatchingFields{IssuedByIndex: mesh + "/" + backend}, client.UnsafeDisableDeepCopy); err != nil {
		return 0, err
	}
	return len(secrets.Items), nil
}

// GenericIssuer returns the Issuer (in the system namespace) or ClusterIssuer
// that a defaulted cert-manager.io issuerRef names, or nil if there is none.
func (l Cache) GenericIssuer(ref cmmeta.IssuerReference) (cmapi.GenericIssuer, error) {
	var iss cmapi.GenericIssuer
	key := types.NamespacedName{Name: ref.Name}
	switch ref.Kind {
	case cmapi.IssuerKind:
		iss, key.Namespace = &cmapi.Issuer{}, l.SystemNamespace
	case cmapi.ClusterIssuerKind:
		iss = &cmapi.ClusterIssuer{}
	default:
		return nil, nil
	}
	if err := l.Cache.Get(l.Ctx, key, iss); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return iss, nil
}

// IssuerReadiness reads an issuer's Ready condition.
func IssuerReadiness(status *cmapi.IssuerStatus) validation.IssuerState {
	for _, c := range status.Conditions {
		if c.Type == cmapi.IssuerConditionReady {
			return validation.IssuerState{Ready: c.Status == cmmeta.ConditionTrue, Reason: c.Reason, Message: c.Message}
		}
	}
	return validation.IssuerState{}
}
