package reconciler

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/meshcert/meshcert/model"
)

// ownedLabels mark what meshcert creates for a dataplane; the caches select on
// model.ManagedByLabel.
func ownedLabels(p *plan) map[string]string {
	return map[string]string{
		model.ManagedByLabel:          model.ManagedByValue,
		model.ManagedMeshLabel:        labelValue(p.mesh.Name),
		model.DataplaneNamespaceLabel: labelValue(p.dataplane.Namespace),
		model.DataplaneNameLabel:      labelValue(p.dataplane.Name),
	}
}

func ownedAnnotations(p *plan) map[string]string {
	return map[string]string{
		model.MeshAnnotation:               p.mesh.Name,
		model.BackendAnnotation:            p.backend,
		model.DataplaneNamespaceAnnotation: p.dataplane.Namespace,
		model.DataplaneNameAnnotation:      p.dataplane.Name,
	}
}

// deliveredSecret returns the dataplane's Secret from the cache, or nil. The
// cache holds only Secrets labelled as meshcert's; one that is labelled but
// made for another dataplane is a conflict, and left alone.
func (r *Reconciler) deliveredSecret(ctx context.Context, dp *model.DataplaneResource) (*corev1.Secret, error) {
	var s corev1.Secret
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: dp.Namespace, Name: SecretName(dp.Name)}, &s)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.Annotations[model.DataplaneNameAnnotation] != dp.Name {
		return nil, fmt.Errorf("secret %s/%s carries meshcert's label but belongs to dataplane %q", s.Namespace, s.Name, s.Annotations[model.DataplaneNameAnnotation])
	}
	return &s, nil
}

// writeSecret creates or updates the dataplane's Secret. Creating never
// overwrites: a Secret of that name that meshcert does not manage makes it
// fail with AlreadyExists.
func (r *Reconciler) writeSecret(ctx context.Context, dp *model.DataplaneResource, p *plan, existing *corev1.Secret, data map[string][]byte, leaf *x509.Certificate) error {
	annotations := ownedAnnotations(p)
	annotations[model.IdentityHashAnnotation] = p.identityHash
	annotations[model.IssuerHashAnnotation] = p.issuerHash
	annotations[model.NotAfterAnnotation] = leaf.NotAfter.UTC().Format(time.RFC3339)
	meta := metav1.ObjectMeta{
		Name:        SecretName(dp.Name),
		Namespace:   dp.Namespace,
		Labels:      ownedLabels(p),
		Annotations: annotations,
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: model.GroupVersion.String(),
			Kind:       "Dataplane",
			Name:       dp.Name,
			UID:        dp.UID,
			Controller: ptr.To(true),
		}},
	}
	if existing == nil {
		return r.Client.Create(ctx, &corev1.Secret{ObjectMeta: meta, Type: corev1.SecretTypeTLS, Data: data})
	}
	s := existing.DeepCopy()
	s.Labels, s.Annotations, s.OwnerReferences = meta.Labels, meta.Annotations, meta.OwnerReferences
	s.Data = data
	return r.Client.Update(ctx, s)
}
