package dataplane

import (
	"bytes"
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/trust"
)

// TrustBundleLabel marks the ConfigMaps meshcert publishes each mesh's roots
// in, so that a trust-manager Bundle can select them as a source.
const TrustBundleLabel = "meshcert.io/trust-bundle"

// TrustBundleName is the ConfigMap of a mesh's published roots.
func TrustBundleName(mesh string) string { return kuma.LimitName("meshcert-trust-"+mesh, "") }

// publishBundle keeps the mesh's roots, exactly what its dataplanes trust, in
// a ConfigMap of the system namespace with key ca.crt, for clients outside
// the mesh. While a root is still to be learned, as after a restart, the
// ConfigMap keeps what it holds: a client must never lose a root it needs.
func (r *Reconciler) publishBundle(ctx context.Context, mesh string, roots trust.MeshRoots) error {
	if !roots.Complete() || !r.roots.KnowsAll(roots.Keys) {
		return nil
	}
	bundle := roots.Bundle()
	key := types.NamespacedName{Namespace: r.SystemNamespace, Name: TrustBundleName(mesh)}
	var cm corev1.ConfigMap
	err := r.Client.Get(ctx, key, &cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace, Labels: map[string]string{
				kuma.ManagedByLabel: kuma.ManagedByValue, kuma.ManagedMeshLabel: kuma.LabelValue(mesh), TrustBundleLabel: "true",
			}, Annotations: map[string]string{kuma.MeshAnnotation: mesh}},
			Data: map[string]string{kuma.CAKey: string(bundle)},
		}
		logf.FromContext(ctx).Info("Publishing the mesh's roots", "configMap", key.Name)
		return client.IgnoreAlreadyExists(r.Client.Create(ctx, &cm))
	case err != nil:
		return err
	case cm.Annotations[kuma.MeshAnnotation] != mesh:
		return nil // Not meshcert's for this mesh.
	case bytes.Equal([]byte(cm.Data[kuma.CAKey]), bundle):
		return nil
	}
	updated := cm.DeepCopy()
	updated.Data = map[string]string{kuma.CAKey: string(bundle)}
	logf.FromContext(ctx).Info("Updating the mesh's published roots", "configMap", key.Name)
	return r.Client.Update(ctx, updated)
}

// unpublishBundle deletes the published roots of a mesh that is gone.
func (r *Reconciler) unpublishBundle(ctx context.Context, mesh string) error {
	var cm corev1.ConfigMap
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.SystemNamespace, Name: TrustBundleName(mesh)}, &cm)
	if apierrors.IsNotFound(err) || (err == nil && cm.Annotations[kuma.MeshAnnotation] != mesh) {
		return nil
	}
	if err != nil {
		return err
	}
	return client.IgnoreNotFound(r.Client.Delete(ctx, &cm, client.Preconditions{UID: &cm.UID}))
}
