// Package trust knows the roots a mesh trusts, and is the one root prober for
// every caller. The roots are the CA of every backend of the mesh, enabled or
// not, as configured, or as learned for an issuer that names none: from a
// certificate it issued, or from a probe certificate (Prober). They are
// encoded as one stable PEM bundle, so that an unchanged set of roots is the
// same bytes and causes no write.
package trust

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"sync"
	"time"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
)

// BackendKey names a backend as configured: a change to its issuer or its
// caCert makes it another backend, whose root must be learned anew.
type BackendKey struct {
	Mesh, Backend, Config string
}

// CertManagerKey identifies a certmanager backend by its issuer and caCert.
func CertManagerKey(mesh string, b kuma.Backend, caCert []byte) BackendKey {
	ref := defaults.IssuerRef(b.CertManager.IssuerRef)
	return BackendKey{Mesh: mesh, Backend: b.Name, Config: kuma.Hash(b.Name, ref.Group, ref.Kind, ref.Name, string(caCert))}
}

// Store remembers the roots of certmanager backends without caCert, learned
// from a certificate they issued or from a probe, and the backends whose root
// could not be learned.
type Store struct {
	mu      sync.Mutex
	learned map[BackendKey]learnedRoots
	// failed holds when each backend whose root could not be learned is
	// asked again.
	failed map[BackendKey]time.Time
}

// learnedRoots are a backend's roots, and when they were learned.
type learnedRoots struct {
	roots []*x509.Certificate
	at    time.Time
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{learned: map[BackendKey]learnedRoots{}, failed: map[BackendKey]time.Time{}}
}

// Learn records a backend's roots, learned at a time, and reports whether
// they are news.
func (s *Store) Learn(k BackendKey, at time.Time, roots ...*x509.Certificate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.failed, k)
	old, ok := s.learned[k]
	s.learned[k] = learnedRoots{roots: roots, at: at}
	return !ok || !slices.EqualFunc(old.roots, roots, (*x509.Certificate).Equal)
}

// Roots returns what was learned of a backend, and when.
func (s *Store) Roots(k BackendKey) ([]*x509.Certificate, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.learned[k]
	return r.roots, r.at, ok
}

// KnowsAll tells whether the roots of all the keys are known.
func (s *Store) KnowsAll(keys map[BackendKey]bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range keys {
		if _, ok := s.learned[k]; !ok {
			return false
		}
	}
	return true
}

// Fail records that a backend's root could not be learned, and when to ask
// again: the issuance backoff's next attempt, so that a passing failure
// delays a rotation by seconds, not minutes.
func (s *Store) Fail(k BackendKey, retryAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed[k] = retryAt
}

// RetryAt tells when a backend whose root could not be learned is asked
// again, if it is one.
func (s *Store) RetryAt(k BackendKey) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.failed[k]
	return t, ok
}

// Prune forgets the backends of a mesh that are no longer configured.
func (s *Store) Prune(mesh string, keep map[BackendKey]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.learned {
		if k.Mesh == mesh && !keep[k] {
			delete(s.learned, k)
		}
	}
	for k := range s.failed {
		if k.Mesh == mesh && !keep[k] {
			delete(s.failed, k)
		}
	}
}

// MeshRoots are what a mesh's trust bundle is made of.
type MeshRoots struct {
	Roots []*x509.Certificate
	// Unknown lists the backends whose root is yet to be learned by a probe.
	Unknown []kuma.Backend
	// Keys are the certmanager backends without caCert, as configured, for
	// pruning the store.
	Keys map[BackendKey]bool
}

// Bundle is the PEM trust bundle: every root once, in a stable order.
func (m MeshRoots) Bundle() []byte { return EncodeRoots(m.Roots) }

// Complete says no backend's root is still to be learned.
func (m MeshRoots) Complete() bool { return len(m.Unknown) == 0 }

// UniqueRoots returns roots each once, in a stable order (by their DER).
func UniqueRoots(roots []*x509.Certificate) []*x509.Certificate {
	out := slices.Clone(roots)
	slices.SortFunc(out, func(a, b *x509.Certificate) int { return bytes.Compare(a.Raw, b.Raw) })
	return slices.CompactFunc(out, (*x509.Certificate).Equal)
}

// EarliestExpiry is when the first of roots, at least one, expires.
func EarliestExpiry(roots []*x509.Certificate) time.Time {
	return slices.MinFunc(roots, func(a, b *x509.Certificate) int { return a.NotAfter.Compare(b.NotAfter) }).NotAfter
}

// EncodeRoots encodes roots as PEM, each once, sorted.
func EncodeRoots(roots []*x509.Certificate) []byte {
	var out bytes.Buffer
	for _, r := range UniqueRoots(roots) {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
	}
	return out.Bytes()
}

// Of gathers the roots of every backend of a mesh, enabled or not: the caCert
// of a certmanager backend or else its learned root, the cert of a provided
// backend, and the CA Secret Kuma keeps for a builtin one. The enabled
// backend's root, when it must be learned, is learned from its own
// certificates, so it is never counted as unknown; another backend whose
// root could not be learned is asked for again once its retry time has come.
func (s *Store) Of(mesh string, spec kuma.MeshSpec, env lookup.Env) MeshRoots {
	m := MeshRoots{Keys: map[BackendKey]bool{}}
	if spec.MTLS == nil {
		return m
	}
	dataSource := func(ds *kuma.DataSource) []*x509.Certificate {
		if ds == nil {
			return nil
		}
		return lookup.ResolveCACert(mesh, *ds, env).Roots()
	}
	for _, b := range spec.MTLS.Backends {
		switch {
		case b.CertManager != nil && b.CertManager.CACert != nil:
			m.Roots = append(m.Roots, dataSource(b.CertManager.CACert)...)
		case b.CertManager != nil:
			k := CertManagerKey(mesh, b, nil)
			m.Keys[k] = true
			if roots, _, ok := s.Roots(k); ok {
				m.Roots = append(m.Roots, roots...)
			} else if retryAt, failed := s.RetryAt(k); b.Name != spec.MTLS.EnabledBackend && (!failed || !env.Now.Before(retryAt)) {
				m.Unknown = append(m.Unknown, b)
			}
		case b.Type == kuma.BackendTypeProvided:
			m.Roots = append(m.Roots, dataSource(b.ProvidedCert)...)
		case b.Type == kuma.BackendTypeBuiltin:
			name := kuma.BuiltinCASecretName(mesh, b.Name)
			m.Roots = append(m.Roots, dataSource(&kuma.DataSource{Secret: &name})...)
		}
	}
	return m
}
