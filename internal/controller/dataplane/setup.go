package dataplane

import (
	"context"
	"slices"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/kuma"
)

// meshIndex indexes Dataplanes by their mesh.
const meshIndex = "mesh"

// SetupWithManager registers the reconciler and what it watches: Dataplanes,
// their Meshes, the issuers and mesh Secrets the Meshes refer to, and the
// CertificateRequests and Secrets meshcert made.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, workers int) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &kuma.DataplaneResource{}, meshIndex, func(o client.Object) []string {
		return []string{o.(*kuma.DataplaneResource).MeshName()}
	}); err != nil {
		return err
	}
	if err := ctrl.NewControllerManagedBy(mgr).
		Named("dataplane-certificates").
		For(&kuma.DataplaneResource{}).
		Watches(&kuma.MeshResource{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			return r.dataplanesInMesh(ctx, o.GetName())
		})).
		Watches(&cmapi.CertificateRequest{}, handler.EnqueueRequestsFromMapFunc(r.dataplanesOfRequest)).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.dataplanesOfSecret)).
		Watches(&cmapi.Issuer{}, handler.EnqueueRequestsFromMapFunc(r.dataplanesOfIssuer(cmapi.IssuerKind))).
		Watches(&cmapi.ClusterIssuer{}, handler.EnqueueRequestsFromMapFunc(r.dataplanesOfIssuer(cmapi.ClusterIssuerKind))).
		WatchesRawSource(source.Channel(r.dataplaneTurns, &handler.EnqueueRequestForObject{})).
		// One controller runs per process, but tests start one after another
		// in the same process, which the name check would refuse.
		WithOptions(controller.Options{MaxConcurrentReconciles: workers, RateLimiter: r.Backoff.RateLimiter()}).
		Complete(r); err != nil {
		return err
	}
	meshOf := func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetAnnotations()[kuma.MeshAnnotation]}}}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("mesh-roots").
		For(&kuma.MeshResource{}).
		Watches(&cmapi.CertificateRequest{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			if o.GetLabels()[ProbeLabel] != "true" {
				return nil
			}
			return meshOf(ctx, o)
		})).
		WatchesRawSource(source.Channel(r.meshTurns, &handler.EnqueueRequestForObject{}))
	if r.PublishTrustBundles {
		// The published roots change with a delivered certificate (the
		// enabled backend's root is learned from it), a mesh Secret, and
		// anyone's edit of the ConfigMap.
		b = b.Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			if o.GetLabels()[kuma.ManagedByLabel] == kuma.ManagedByValue {
				return meshOf(ctx, o)
			}
			if o.GetNamespace() != r.SystemNamespace || o.(*corev1.Secret).Type != kuma.MeshSecretType {
				return nil
			}
			return r.meshesOf(ctx, func(m *kuma.MeshResource) bool { return slices.Contains(meshSecretsOf(m), o.GetName()) })
		})).
			Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
				if o.GetLabels()[TrustBundleLabel] != "true" {
					return nil
				}
				return meshOf(ctx, o)
			}))
	}
	return b.Complete(reconcile.Func(r.ReconcileMesh))
}

// dataplanesOfRequest maps a request to its dataplane; a probe, once done,
// may change the trust bundle of every dataplane of its mesh.
func (r *Reconciler) dataplanesOfRequest(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetLabels()[ProbeLabel] == "true" {
		return r.dataplanesInMesh(ctx, o.GetAnnotations()[kuma.MeshAnnotation])
	}
	return dataplaneOf(ctx, o)
}

// dataplaneOf maps what meshcert made back to its dataplane.
func dataplaneOf(_ context.Context, o client.Object) []reconcile.Request {
	a := o.GetAnnotations()
	ns, name := a[kuma.DataplaneNamespaceAnnotation], a[kuma.DataplaneNameAnnotation]
	if ns == "" || name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}}
}

// dataplanesOfSecret maps a delivered Secret to its dataplane, and a mesh
// Secret of the system namespace to the dataplanes of the meshes whose
// enabled backend uses it as caCert.
func (r *Reconciler) dataplanesOfSecret(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetLabels()[kuma.ManagedByLabel] == kuma.ManagedByValue {
		return dataplaneOf(ctx, o)
	}
	if o.GetNamespace() != r.SystemNamespace || o.(*corev1.Secret).Type != kuma.MeshSecretType {
		return nil
	}
	return r.dataplanesOfMeshes(ctx, func(m *kuma.MeshResource) bool {
		return slices.Contains(meshSecretsOf(m), o.GetName())
	})
}

// meshSecretsOf lists the mesh Secrets that the backends of a Mesh read:
// caCert and provided certs, and the builtin CAs.
func meshSecretsOf(m *kuma.MeshResource) []string {
	spec, errs := kuma.ParseMeshSpec(m.Spec)
	if len(errs) > 0 || spec.MTLS == nil {
		return nil
	}
	var names []string
	for _, b := range spec.MTLS.Backends {
		for _, ds := range []*kuma.DataSource{b.ProvidedCert, certManagerCACert(b)} {
			if ds != nil && ds.Secret != nil {
				names = append(names, *ds.Secret)
			}
		}
		if b.Type == kuma.BackendTypeBuiltin {
			names = append(names, kuma.BuiltinCASecretName(m.Name, b.Name))
		}
	}
	return names
}

func certManagerCACert(b kuma.Backend) *kuma.DataSource {
	if b.CertManager == nil {
		return nil
	}
	return b.CertManager.CACert
}

// dataplanesOfIssuer maps an issuer to the dataplanes of the meshes whose
// enabled backend names it.
func (r *Reconciler) dataplanesOfIssuer(kind string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		if kind == cmapi.IssuerKind && o.GetNamespace() != r.SystemNamespace {
			return nil
		}
		return r.dataplanesOfMeshes(ctx, func(m *kuma.MeshResource) bool {
			b := enabledBackend(m)
			if b == nil {
				return false
			}
			ref := defaults.IssuerRef(b.CertManager.IssuerRef)
			return ref.Group == defaults.IssuerGroup && ref.Kind == kind && ref.Name == o.GetName()
		})
	}
}

// dataplanesOfMeshes lists the dataplanes of the meshes that match.
func (r *Reconciler) dataplanesOfMeshes(ctx context.Context, match func(*kuma.MeshResource) bool) []reconcile.Request {
	var reqs []reconcile.Request
	for _, m := range r.meshesOf(ctx, match) {
		reqs = append(reqs, r.dataplanesInMesh(ctx, m.Name)...)
	}
	return reqs
}

// meshesOf lists the meshes that match.
func (r *Reconciler) meshesOf(ctx context.Context, match func(*kuma.MeshResource) bool) []reconcile.Request {
	var meshes kuma.MeshResourceList
	if err := r.Client.List(ctx, &meshes); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for i := range meshes.Items {
		if match(&meshes.Items[i]) {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: meshes.Items[i].Name}})
		}
	}
	return reqs
}

// dataplanesInMesh lists the dataplanes of a mesh, which may be gone already.
func (r *Reconciler) dataplanesInMesh(ctx context.Context, mesh string) []reconcile.Request {
	var dps kuma.DataplaneResourceList
	if err := r.Client.List(ctx, &dps, client.MatchingFields{meshIndex: mesh}); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(dps.Items))
	for _, dp := range dps.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: dp.Namespace, Name: dp.Name}})
	}
	return reqs
}

func enabledBackend(m *kuma.MeshResource) *kuma.Backend {
	spec, errs := kuma.ParseMeshSpec(m.Spec)
	if len(errs) > 0 {
		return nil
	}
	return spec.EnabledCertManagerBackend()
}
