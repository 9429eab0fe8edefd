package reconciler

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"sync"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/issuance"
	"github.com/meshcert/meshcert/model"
	"github.com/meshcert/meshcert/references"
)

// backendKey names a backend as configured: a change to its issuer or its
// caCert makes it another backend, whose root must be learned anew.
type backendKey struct {
	mesh, backend, config string
}

// trustStore remembers the roots of certmanager backends without caCert,
// learned from status.ca of a request, from a delivered certificate's chain,
// or from a probe; and the backends whose root could not be learned.
type trustStore struct {
	mu      sync.Mutex
	learned map[backendKey][]*x509.Certificate
	failed  map[backendKey]time.Time
}

func newTrustStore() *trustStore {
	return &trustStore{learned: map[backendKey][]*x509.Certificate{}, failed: map[backendKey]time.Time{}}
}

// learn records a backend's roots, and reports whether they are news.
func (s *trustStore) learn(k backendKey, roots ...*x509.Certificate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.failed, k)
	old, ok := s.learned[k]
	s.learned[k] = roots
	return !ok || !slices.EqualFunc(old, roots, (*x509.Certificate).Equal)
}

func (s *trustStore) roots(k backendKey) ([]*x509.Certificate, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.learned[k]
	return r, ok
}

// fail records that a backend's root could not be learned.
func (s *trustStore) fail(k backendKey, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed[k] = at
}

// failedSince tells when learning a backend's root last failed, if it did.
func (s *trustStore) failedSince(k backendKey) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.failed[k]
	return t, ok
}

// givenUp tells whether learning a backend's root failed less than retry ago:
// until then the bundle does without it, rather than wait for it.
func (s *trustStore) givenUp(k backendKey, now time.Time, retry time.Duration) bool {
	at, failed := s.failedSince(k)
	return failed && now.Sub(at) < retry
}

// prune forgets the backends of a mesh that are no longer configured.
func (s *trustStore) prune(mesh string, keep map[backendKey]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.learned {
		if k.mesh == mesh && !keep[k] {
			delete(s.learned, k)
		}
	}
	for k := range s.failed {
		if k.mesh == mesh && !keep[k] {
			delete(s.failed, k)
		}
	}
}

// certManagerKey identifies a certmanager backend by its issuer and caCert.
func certManagerKey(mesh string, b model.Backend, caCert []byte) backendKey {
	ref := defaults.IssuerRef(b.CertManager.IssuerRef)
	return backendKey{mesh: mesh, backend: b.Name, config: model.Hash(b.Name, ref.Group, ref.Kind, ref.Name, string(caCert))}
}

// meshTrust is what a mesh's trust bundle is made of.
type meshTrust struct {
	roots []*x509.Certificate
	// unknown lists the backends whose root is yet to be learned by a probe.
	unknown []model.Backend
	// keys are the backends as configured, for pruning the store.
	keys map[backendKey]bool
}

// bundle is the PEM trust bundle: every root once, in a stable order, so an
// unchanged set of roots is the same bytes and causes no write.
func (t meshTrust) bundle() []byte {
	return encodeRoots(t.roots)
}

func encodeRoots(roots []*x509.Certificate) []byte {
	ders := make([][]byte, 0, len(roots))
	for _, r := range roots {
		ders = append(ders, r.Raw)
	}
	slices.SortFunc(ders, bytes.Compare)
	ders = slices.CompactFunc(ders, bytes.Equal)
	var out bytes.Buffer
	for _, d := range ders {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: d})
	}
	return out.Bytes()
}

// trustOf gathers the roots of every backend of a mesh, enabled or not: the
// caCert of a certmanager backend or else its learned root, the cert of a
// provided backend, and the CA Secret Kuma keeps for a builtin one. The
// enabled backend's root, when it must be learned, is learned from its own
// certificates, so it is never counted as unknown; another backend whose
// probe failed is probed again once the longest backoff has passed.
func (r *Reconciler) trustOf(mesh string, spec model.MeshSpec) meshTrust {
	t := meshTrust{keys: map[backendKey]bool{}}
	if spec.MTLS == nil {
		return t
	}
	env := r.env()
	dataSource := func(ds *model.DataSource) []*x509.Certificate {
		if ds == nil {
			return nil
		}
		return references.ResolveCACert(mesh, *ds, env).Roots()
	}
	for _, b := range spec.MTLS.Backends {
		switch {
		case b.CertManager != nil && b.CertManager.CACert != nil:
			t.roots = append(t.roots, dataSource(b.CertManager.CACert)...)
		case b.CertManager != nil:
			k := certManagerKey(mesh, b, nil)
			t.keys[k] = true
			if roots, ok := r.trust.roots(k); ok {
				t.roots = append(t.roots, roots...)
			} else if b.Name != spec.MTLS.EnabledBackend && !r.trust.givenUp(k, env.Now, r.Backoff.Max) {
				t.unknown = append(t.unknown, b)
			}
		case b.Type == model.BackendTypeProvided:
			t.roots = append(t.roots, dataSource(b.ProvidedCert)...)
		case b.Type == model.BackendTypeBuiltin:
			name := model.BuiltinCASecretName(mesh, b.Name)
			t.roots = append(t.roots, dataSource(&model.DataSource{Secret: &name})...)
		}
	}
	return t
}

// learnFromSecret learns the enabled backend's root from a certificate it
// delivered: the root its chain verifies to. After a restart this recovers
// the root without asking the issuer again.
func (r *Reconciler) learnFromSecret(p *plan, s *corev1.Secret) {
	if p.trust != nil || s == nil || s.Annotations[model.IssuerHashAnnotation] != p.issuerHash {
		return
	}
	if _, ok := r.trust.roots(p.enabledKey); ok {
		return
	}
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		return
	}
	if root, err := issuance.VerifyChain(chain, s.Data[model.CAKey], r.Clock.Now()); err == nil {
		r.trust.learn(p.enabledKey, root)
	}
}
