package dataplane

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/internal/kuma"
)

// SecretName is the name of the Secret delivered for a dataplane, in its namespace.
func SecretName(dataplane string) string {
	return kuma.LimitName(dataplane, "-mtls")
}

// ownedLabels mark what meshcert creates for a dataplane; the caches select on
// kuma.ManagedByLabel.
func ownedLabels(p *plan) map[string]string {
	return map[string]string{
		kuma.ManagedByLabel:          kuma.ManagedByValue,
		kuma.ManagedMeshLabel:        kuma.LabelValue(p.mesh.Name),
		kuma.DataplaneNamespaceLabel: kuma.LabelValue(p.dataplane.Namespace),
		kuma.DataplaneNameLabel:      kuma.LabelValue(p.dataplane.Name),
	}
}

func ownedAnnotations(p *plan) map[string]string {
	return map[string]string{
		kuma.MeshAnnotation:               p.mesh.Name,
		kuma.BackendAnnotation:            p.backend,
		kuma.DataplaneNamespaceAnnotation: p.dataplane.Namespace,
		kuma.DataplaneNameAnnotation:      p.dataplane.Name,
	}
}

// deliveredSecret returns the dataplane's Secret from the cache, or nil. The
// cache holds only Secrets labelled as meshcert's; one that is labelled but
// made for another dataplane is a conflict, and left alone.
func (r *Reconciler) deliveredSecret(ctx context.Context, dp *kuma.DataplaneResource) (*corev1.Secret, error) {
	var s corev1.Secret
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: dp.Namespace, Name: SecretName(dp.Name)}, &s)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.Annotations[kuma.DataplaneNameAnnotation] != dp.Name {
		return nil, fmt.Errorf("secret %s/%s carries meshcert's label but belongs to dataplane %q", s.Namespace, s.Name, s.Annotations[kuma.DataplaneNameAnnotation])
	}
	return &s, nil
}

// writeSecret creates or updates the dataplane's Secret. Creating never
// overwrites: a Secret of that name that meshcert does not manage makes it
// fail with AlreadyExists.
func (r *Reconciler) writeSecret(ctx context.Context, dp *kuma.DataplaneResource, p *plan, existing *corev1.Secret, data map[string][]byte, leaf *x509.Certificate) error {
	want := secretFor(dp, p, data, leaf)
	if existing == nil {
		return r.Client.Create(ctx, want)
	}
	// Labels, annotations, owner references and data are replaced whole, so
	// nothing the compacted cached copy left out is written away.
	s := existing.DeepCopy()
	s.Labels, s.Annotations, s.OwnerReferences = want.Labels, want.Annotations, want.OwnerReferences
	s.Data = data
	return r.Client.Update(ctx, s)
}

// secretFor is the Secret meshcert delivers to a dataplane.
func secretFor(dp *kuma.DataplaneResource, p *plan, data map[string][]byte, leaf *x509.Certificate) *corev1.Secret {
	annotations := ownedAnnotations(p)
	annotations[kuma.IdentityHashAnnotation] = p.identityHash
	annotations[kuma.IssuerHashAnnotation] = p.issuerHash
	annotations[kuma.NotAfterAnnotation] = leaf.NotAfter.UTC().Format(time.RFC3339)
	// As cert-manager annotates a Certificate's Secret, so its tools and
	// kubectl describe show where the certificate came from.
	annotations[cmapi.IssuerNameAnnotationKey] = p.issuerRef.Name
	annotations[cmapi.IssuerKindAnnotationKey] = p.issuerRef.Kind
	annotations[cmapi.IssuerGroupAnnotationKey] = p.issuerRef.Group
	annotations[cmapi.URISANAnnotationKey] = strings.Join(pki.URLsToString(leaf.URIs), ",")
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        SecretName(dp.Name),
			Namespace:   dp.Namespace,
			Labels:      ownedLabels(p),
			Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: kuma.GroupVersion.String(),
				Kind:       "Dataplane",
				Name:       dp.Name,
				UID:        dp.UID,
				Controller: ptr.To(true),
			}},
		},
		Type: corev1.SecretTypeTLS,
		Data: data,
	}
}

// updateBundle rewrites only a Secret's ca.crt: a backend was added or
// removed, and the certificate and key stay as they are. It patches that one
// key, at the cached resourceVersion, because the cached copy is compacted
// (SecretCompactor) and must never be written back whole.
func (r *Reconciler) updateBundle(ctx context.Context, s *corev1.Secret, bundle []byte) error {
	updated := s.DeepCopy()
	updated.Data[kuma.CAKey] = bundle
	logf.FromContext(ctx).V(1).Info("Updating the trust bundle", "secret", s.Name)
	return r.Client.Patch(ctx, updated, client.MergeFromWithOptions(s, client.MergeFromWithOptimisticLock{}))
}

// serialOf is the serial of a Secret's certificate, or "".
func serialOf(s *corev1.Secret) string {
	if s == nil {
		return ""
	}
	if leaf := leafOf(s); leaf != nil {
		return leaf.SerialNumber.String()
	}
	return ""
}
