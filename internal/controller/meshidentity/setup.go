package meshidentity

import (
	"context"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// Installed tells whether the cluster serves Kuma's MeshIdentity and
// MeshTrust, which Kuma has only since 2.12.
func Installed(mapper meta.RESTMapper) bool {
	for _, kind := range []string{"MeshIdentity", "MeshTrust"} {
		if _, err := mapper.RESTMapping(kuma.GroupVersion.WithKind(kind).GroupKind(), kuma.GroupVersion.Version); err != nil {
			return false
		}
	}
	return true
}

// SetupWithManager registers the reconciler and what it watches: the
// MeshIdentities, the MeshTrusts it keeps, the issuers and mesh Secrets the
// identities name, and its probes.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("mesh-identity-trust").
		For(&kuma.MeshIdentityResource{}).
		Owns(&kuma.MeshTrustResource{}).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			if o.GetNamespace() != r.SystemNamespace || o.(*corev1.Secret).Type != kuma.MeshSecretType {
				return nil
			}
			return r.identities(ctx, func(_ *kuma.MeshIdentityResource, conf kuma.CertManagerConf) bool {
				return conf.CACert != nil && conf.CACert.Secret != nil && *conf.CACert.Secret == o.GetName()
			})
		})).
		Watches(&cmapi.Issuer{}, handler.EnqueueRequestsFromMapFunc(r.identitiesOfIssuer(cmapi.IssuerKind))).
		Watches(&cmapi.ClusterIssuer{}, handler.EnqueueRequestsFromMapFunc(r.identitiesOfIssuer(cmapi.ClusterIssuerKind))).
		Watches(&cmapi.CertificateRequest{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			owner, ok := issuance.OwnerOf(o)
			if !ok || owner.Kind != issuance.OwnerMeshIdentity {
				return nil
			}
			return []reconcile.Request{{NamespacedName: owner.NamespacedName()}}
		})).
		Complete(r)
}

// identitiesOfIssuer maps an issuer to the identities that name it.
func (r *Reconciler) identitiesOfIssuer(kind string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		if kind == cmapi.IssuerKind && o.GetNamespace() != r.SystemNamespace {
			return nil
		}
		return r.identities(ctx, func(_ *kuma.MeshIdentityResource, conf kuma.CertManagerConf) bool {
			ref := defaults.IssuerRef(conf.IssuerRef)
			return ref.Group == defaults.IssuerGroup && ref.Kind == kind && ref.Name == o.GetName()
		})
	}
}

// identities lists the served identities that match.
func (r *Reconciler) identities(ctx context.Context, match func(*kuma.MeshIdentityResource, kuma.CertManagerConf) bool) []reconcile.Request {
	var list kuma.MeshIdentityResourceList
	if err := r.Client.List(ctx, &list, client.InNamespace(r.SystemNamespace)); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		mid := &list.Items[i]
		if mid.ServedBy() == kuma.NotServed {
			continue
		}
		if conf, errs := mid.CertManagerConf(); len(errs) == 0 && match(mid, conf) {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: mid.Namespace, Name: mid.Name}})
		}
	}
	return reqs
}
