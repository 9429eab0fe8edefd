package dataplane

import (
	"crypto/x509"
	"sync"
	"unique"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// cachedKeyAnnotation is set on the cached copy of a delivered Secret only,
// in place of its tls.key: what checkKey found when the Secret was cached.
// It is never written to the API server.
const cachedKeyAnnotation = "meshcert.io/cached-key"

// The two ways a delivered key can be wrong, as checkDelivered reports them.
const (
	keyUnreadable = "tls.key is not a private key"
	keyMismatch   = "tls.key does not match tls.crt"
)

// readAnnotations are the annotations of a delivered Secret that meshcert
// reads from its cache; sharedValues are those whose values many Secrets
// repeat: a mesh, its backend, a namespace, an issuer.
var (
	readAnnotations = []string{
		kuma.MeshAnnotation, kuma.BackendAnnotation, kuma.DataplaneNamespaceAnnotation, kuma.DataplaneNameAnnotation,
		kuma.IdentityHashAnnotation, kuma.IssuerHashAnnotation, kuma.NotAfterAnnotation,
	}
	sharedValues = map[string]bool{
		kuma.MeshAnnotation: true, kuma.BackendAnnotation: true, kuma.DataplaneNamespaceAnnotation: true, kuma.IssuerHashAnnotation: true,
	}
	// cachedLabels are the labels of every cached delivered Secret, one map
	// for all of them: meshcert reads only the label that makes a Secret its
	// own, and selects nothing else from the cache.
	cachedLabels = map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue}
)

// maxSharedBundles bounds the trust bundles a SecretCompactor shares: a mesh
// has one at a time, two during a CA rotation.
const maxSharedBundles = 64

// SecretCompactor is the cache transform of the Secrets meshcert delivers.
// A cached Secret keeps what the reconciler reads and no more: the
// annotations it reads, the label that makes it meshcert's, the chain, and
// the trust bundle, held once for all Secrets with the same one. It holds
// neither the owner reference nor the private key: the key is checked as
// the Secret is cached (checkKey), and only the result is kept. That is safe
// because meshcert writes a delivered Secret only by replacing its labels,
// annotations, owner reference and data whole (writeSecret) or by patching
// its ca.crt alone (updateBundle), never by sending a cached copy back as it
// is.
type SecretCompactor struct {
	mu      sync.Mutex
	bundles map[string][]byte
}

// Compact trims a Secret meshcert delivered, in place; any other Secret is
// left as it is.
func (c *SecretCompactor) Compact(s *corev1.Secret) {
	// Only this transform may say what a cached key is.
	delete(s.Annotations, cachedKeyAnnotation)
	if !IsDelivered(s) {
		return
	}
	s.Type = corev1.SecretTypeTLS // the constant, not a decoded copy
	s.Namespace = unique.Make(s.Namespace).Value()
	s.Labels = cachedLabels
	annotations := make(map[string]string, len(readAnnotations)+1)
	for _, k := range readAnnotations {
		if v, ok := s.Annotations[k]; ok {
			if sharedValues[k] {
				v = unique.Make(v).Value()
			}
			annotations[k] = v
		}
	}
	annotations[cachedKeyAnnotation] = unique.Make(checkKey(s.Data[corev1.TLSPrivateKeyKey], leafOf(s))).Value()
	s.Annotations = annotations
	delete(s.Data, corev1.TLSPrivateKeyKey)
	// Secrets are mapped to their dataplanes by annotation, and the owner
	// reference is written whole with every Secret.
	s.OwnerReferences = nil
	if b, ok := s.Data[kuma.CAKey]; ok {
		s.Data[kuma.CAKey] = c.shared(b)
	}
}

// IsDelivered says whether a Secret is one meshcert delivers to a dataplane.
func IsDelivered(s *corev1.Secret) bool {
	return s.Type == corev1.SecretTypeTLS && s.Labels[kuma.ManagedByLabel] == kuma.ManagedByValue
}

// leafOf is the first certificate of a Secret's tls.crt, or nil.
func leafOf(s *corev1.Secret) *x509.Certificate {
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		return nil
	}
	return chain[0]
}

// checkKey says what a delivered private key is: its algorithm when it is
// the key of leaf, or else keyUnreadable or keyMismatch.
func checkKey(keyPEM []byte, leaf *x509.Certificate) string {
	key, err := pki.DecodePrivateKeyBytes(keyPEM)
	if err != nil {
		return keyUnreadable
	}
	if leaf == nil {
		return keyMismatch
	}
	if ok, err := pki.PublicKeyMatchesCertificate(key.Public(), leaf); err != nil || !ok {
		return keyMismatch
	}
	return string(issuance.AlgorithmOf(key))
}

// deliveredKey is what checkKey says of a Secret's key: from its cached copy
// when the key itself was left out of the cache, or else from the key.
func deliveredKey(s *corev1.Secret, leaf *x509.Certificate) (algorithm issuance.KeyAlgorithm, problem string) {
	found, cached := s.Annotations[cachedKeyAnnotation]
	if _, hasKey := s.Data[corev1.TLSPrivateKeyKey]; hasKey || !cached {
		found = checkKey(s.Data[corev1.TLSPrivateKeyKey], leaf)
	}
	if found == keyUnreadable || found == keyMismatch {
		return "", found
	}
	return issuance.KeyAlgorithm(found), ""
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
