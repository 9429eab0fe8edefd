package reconciler

import (
	"slices"
	"sync"
	"unique"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/model"
)

// writtenNotRead are annotations meshcert writes on a delivered Secret, as
// cert-manager does, for people and tools, and never reads back.
var writtenNotRead = []string{
	cmapi.IssuerNameAnnotationKey, cmapi.IssuerKindAnnotationKey, cmapi.IssuerGroupAnnotationKey, cmapi.URISANAnnotationKey,
}

// sharedKeys are the label and annotation keys of a delivered Secret, and
// sharedValues those whose values many Secrets repeat: a mesh, its backend,
// a namespace.
var (
	sharedKeys = selfMap(
		model.ManagedByLabel, model.ManagedMeshLabel, model.DataplaneNamespaceLabel, model.DataplaneNameLabel,
		model.MeshAnnotation, model.BackendAnnotation, model.DataplaneNamespaceAnnotation, model.DataplaneNameAnnotation,
		model.IdentityHashAnnotation, model.IssuerHashAnnotation, model.NotAfterAnnotation)
	sharedValues = selfMap(model.ManagedByLabel, model.ManagedMeshLabel, model.DataplaneNamespaceLabel,
		model.BackendAnnotation, model.IssuerHashAnnotation)
)

func selfMap(keys ...string) map[string]string {
	m := make(map[string]string, len(keys))
	for _, k := range keys {
		m[k] = k
	}
	return m
}

// maxSharedBundles bounds the trust bundles a SecretCompactor shares: a mesh
// has one at a time, two during a CA rotation.
const maxSharedBundles = 64

// SecretCompactor is the cache transform of the Secrets meshcert delivers.
// A cached Secret keeps everything the reconciler reads, and holds what
// every Secret of a mesh repeats, its trust bundle and its label and
// annotation keys, once for all of them; the annotations meshcert never
// reads are left out. That is safe because meshcert writes a delivered
// Secret only by replacing its labels, annotations and data whole
// (writeSecret) or by patching its ca.crt alone (updateBundle), never by
// sending a cached copy back as it is.
type SecretCompactor struct {
	mu      sync.Mutex
	bundles map[string][]byte
}

// Compact trims a Secret meshcert delivered, in place; any other Secret,
// such as a mesh's CA Secret, is left whole.
func (c *SecretCompactor) Compact(s *corev1.Secret) {
	if s.Type != corev1.SecretTypeTLS || s.Labels[model.ManagedByLabel] != model.ManagedByValue {
		return
	}
	s.Type = corev1.SecretTypeTLS // the constant, not a decoded copy
	s.Namespace = unique.Make(s.Namespace).Value()
	s.Labels = compactStrings(s.Labels, nil)
	s.Annotations = compactStrings(s.Annotations, writtenNotRead)
	for i := range s.OwnerReferences {
		ref := &s.OwnerReferences[i]
		ref.APIVersion, ref.Kind = unique.Make(ref.APIVersion).Value(), unique.Make(ref.Kind).Value()
	}
	if b, ok := s.Data[model.CAKey]; ok {
		s.Data[model.CAKey] = c.shared(b)
	}
}

// shared returns the one copy of a trust bundle that every cached Secret
// with those bytes points to. Cached objects are read-only: readers of the
// cache get deep copies.
func (c *SecretCompactor) shared(b []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.bundles[string(b)]; ok {
		return s
	}
	if c.bundles == nil || len(c.bundles) >= maxSharedBundles {
		c.bundles = map[string][]byte{}
	}
	c.bundles[string(b)] = b
	return b
}

// compactStrings copies m without the keys dropped, with the known keys and
// the repeated values in one copy each.
func compactStrings(m map[string]string, dropped []string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		if slices.Contains(dropped, k) {
			continue
		}
		if known, ok := sharedKeys[k]; ok {
			k = known
		}
		if _, ok := sharedValues[k]; ok {
			v = unique.Make(v).Value()
		}
		out[k] = v
	}
	return out
}
