package webhook

import (
	"context"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/validation"
)

// CacheLookup serves validation's questions from an informer cache.
type CacheLookup struct {
	Ctx             context.Context
	Cache           client.Reader
	SystemNamespace string
}

var _ validation.Lookup = CacheLookup{}

// SystemSecret implements validation.Lookup.
func (l CacheLookup) SystemSecret(name string) (*corev1.Secret, error) {
	var s corev1.Secret
	if err := l.Cache.Get(l.Ctx, types.NamespacedName{Namespace: l.SystemNamespace, Name: name}, &s); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	return &s, nil
}

// Issuer implements validation.Lookup.
func (l CacheLookup) Issuer(ref cmmeta.IssuerReference) (*validation.IssuerState, error) {
	var (
		status *cmapi.IssuerStatus
		err    error
	)
	switch ref.Kind {
	case cmapi.IssuerKind:
		var iss cmapi.Issuer
		err = l.Cache.Get(l.Ctx, types.NamespacedName{Namespace: l.SystemNamespace, Name: ref.Name}, &iss)
		status = &iss.Status
	case cmapi.ClusterIssuerKind:
		var iss cmapi.ClusterIssuer
		err = l.Cache.Get(l.Ctx, types.NamespacedName{Name: ref.Name}, &iss)
		status = &iss.Status
	default:
		return nil, nil
	}
	if err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	state := IssuerReadiness(status)
	return &state, nil
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
