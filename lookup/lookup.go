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
