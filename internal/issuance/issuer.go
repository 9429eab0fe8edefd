// Package issuance turns an identity into a verified certificate through a
// cert-manager CertificateRequest, and owns all that takes: the key and the
// CSR, the request's name, labels and annotations, waiting for its outcome
// through the informer, the one reading of that outcome, the cap on requests
// in flight, backoff per owner, deleting finished requests, and checking the
// certificate against the key, the identity and the chain before anyone uses
// it. It knows nothing of where a certificate goes: each caller delivers it.
package issuance

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/internal/kuma"
)

// OwnerAnnotation names, on each CertificateRequest, the owner it was made
// for; OwnerIndex indexes the requests by it. IdentitiesAnnotation lists the
// URI SANs it asks for, as istio-csr and csi-driver-spiffe name theirs, for
// people and policies to read. AuditAnnotation marks a request that is kept
// once issued, for auditing.
const (
	OwnerAnnotation      = "meshcert.io/owner"
	OwnerIndex           = "issuance.owner"
	IdentitiesAnnotation = "meshcert.io/identities"
	AuditAnnotation      = "meshcert.io/keep-for-audit"
)

// admitRetry is how often an owner turned away at the cap tries again, in
// case its turn went to an owner that needed none.
const admitRetry = 30 * time.Second

// Options configure an Issuer.
type Options struct {
	// Client reads CertificateRequests from the informer cache, indexed by
	// IndexRequests, and writes to the API server.
	Client    client.Client
	Namespace string
	Clock     clock.PassiveClock
	// MaxInFlight caps the requests open at once; 0 is no cap.
	MaxInFlight int
	// OnTurn is told, without blocking, of an owner turned away at the cap
	// whose turn has come.
	OnTurn func(Owner)
	// Backoff spaces out an owner's attempts after failures.
	Backoff *Backoff
	// Annotations are added to every request, for the policies of external
	// issuers that read them.
	Annotations map[string]string
}

// Issuer issues certificates through CertificateRequests in one namespace.
// Each owner has at most one request in flight; callers never step the same
// owner twice at once.
type Issuer struct {
	client      client.Client
	namespace   string
	clock       clock.PassiveClock
	inFlight    *inFlight
	backoff     *Backoff
	annotations map[string]string
}

// New returns an Issuer.
func New(o Options) *Issuer {
	return &Issuer{
		client:      o.Client,
		namespace:   o.Namespace,
		clock:       o.Clock,
		inFlight:    newInFlight(o.MaxInFlight, o.OnTurn),
		backoff:     o.Backoff,
		annotations: o.Annotations,
	}
}

// IndexRequests adds the index by owner that an Issuer reads through.
func IndexRequests(ctx context.Context, indexer client.FieldIndexer) error {
	return indexer.IndexField(ctx, &cmapi.CertificateRequest{}, OwnerIndex, ownerOf)
}

// ownerOf is the owner a request was made for, when meshcert made it.
func ownerOf(o client.Object) []string {
	if o.GetLabels()[kuma.ManagedByLabel] != kuma.ManagedByValue {
		return nil
	}
	if owner := o.GetAnnotations()[OwnerAnnotation]; owner != "" {
		return []string{owner}
	}
	return nil
}

// Request is what to issue, and for whom.
type Request struct {
	Owner Owner
	// NamePrefix begins the request's name, for people to read.
	NamePrefix string
	// URIs are the certificate's URI SANs, in order.
	URIs         []*url.URL
	KeyAlgorithm KeyAlgorithm
	// Usages are the certificate's key usages; nil means WorkloadUsages.
	Usages    []cmapi.KeyUsage
	IssuerRef cmmeta.IssuerReference
	Duration  time.Duration
	// Timeout bounds the wait for the request's outcome.
	Timeout time.Duration
	// Roots are the PEM roots the certificate must chain to; nil means the
	// request's status.ca.
	Roots []byte
	// Replaces is the serial of the certificate this one replaces, so that
	// each renewal is a request of its own.
	Replaces string
	// Revision is anything else an attempt depends on, such as the issuer's
	// resourceVersion: a change ends the backoff.
	Revision string
	// KeepIssued keeps the request once it is issued, for auditing; every
	// other finished request is deleted.
	KeepIssued bool
	// Labels and Annotations are the caller's, added to the request's own.
	Labels, Annotations map[string]string
}

// name is deterministic in what is asked, so a restarted caller finds its
// own request instead of adding another.
func (r Request) name() string {
	parts := append([]string{r.Owner.String(), r.IssuerRef.Group, r.IssuerRef.Kind, r.IssuerRef.Name, string(r.Roots), r.Replaces}, pki.URLsToString(r.URIs)...)
	return kuma.LimitName(r.NamePrefix, "-"+kuma.Hash(parts...)[:10])
}

// Certificate is an issued certificate, checked against its key, its identity
// and its roots.
type Certificate struct {
	// ChainPEM is the certificate and its chain, as the issuer returned them.
	ChainPEM []byte
	Chain    []*x509.Certificate
	Key      crypto.Signer
	// Root is the root the chain verifies to.
	Root *x509.Certificate
	// Request names the CertificateRequest, for messages.
	Request types.NamespacedName
}

// Leaf is the certificate itself.
func (c *Certificate) Leaf() *x509.Certificate { return c.Chain[0] }

// KeyPEM is the private key, PKCS#8-encoded.
func (c *Certificate) KeyPEM() ([]byte, error) { return pki.EncodePrivateKey(c.Key, cmapi.PKCS8) }

// Failure is why an attempt failed. Reason is a single CamelCase word, as an
// Event's reason.
type Failure struct {
	Reason, Message string
}

func (f *Failure) Error() string { return f.Reason + ": " + f.Message }

// Failf returns a Failure.
func Failf(reason, format string, args ...any) *Failure {
	return &Failure{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// The reasons of the failures Step finds itself.
const (
	ReasonTimeout              = "Timeout"
	ReasonInvalidCertificate   = "InvalidCertificate"
	ReasonCertificateMismatch  = "CertificateMismatch"
	ReasonMissingCA            = "MissingCA"
	ReasonUntrustedCertificate = "UntrustedCertificate"
)

// Outcome is what a Step came to.
type Outcome struct {
	// Certificate is set once it was issued, checked and delivered.
	Certificate *Certificate
	// Failure is set when the attempt failed; it was cleaned up.
	Failure *Failure
	// RetryAfter is when to step again, unless the request's watch or the
	// owner's turn comes first. It is 0 once a certificate is delivered.
	RetryAfter time.Duration
}

// Deliver hands an issued certificate to the caller. An error keeps the
// request to be delivered again on the next step; a *Failure ends the attempt.
type Deliver func(context.Context, *Certificate) error

// Step drives the owner's request one step: wait out a backoff, create the
// request, or act on its outcome. Each step is triggered by the request's
// watch, with a timer only for the deadline.
func (i *Issuer) Step(ctx context.Context, req Request, deliver Deliver) (Outcome, error) {
	name := req.name()
	cause := name + "/" + req.Revision
	now := i.clock.Now()
	if wait := i.backoff.Wait(req.Owner, cause, now); wait > 0 {
		return Outcome{RetryAfter: wait}, nil
	}
	if err := i.cleanup(ctx, req.Owner, name); err != nil {
		return Outcome{}, err
	}
	p := i.inFlight.get(req.Owner)
	if p == nil {
		if !i.inFlight.admit(req.Owner) {
			return Outcome{RetryAfter: admitRetry}, nil
		}
		return i.create(ctx, req, name)
	}

	var cr cmapi.CertificateRequest
	err := i.client.Get(ctx, types.NamespacedName{Namespace: i.namespace, Name: name}, &cr)
	switch {
	case apierrors.IsNotFound(err):
		// Not in the cache yet; its creation wakes the caller up.
	case err != nil:
		return Outcome{}, err
	case !requestUsesKey(&cr, p.key):
		// The cache still holds the request this name had before.
	default:
		var failure *Failure
		switch state, msg := Interpret(&cr); state {
		case Pending:
		case Issued:
			return i.deliver(ctx, req, cause, &cr, p, deliver)
		case Denied:
			failure = Failf(string(state), "CertificateRequest %s/%s was denied: %s", cr.Namespace, cr.Name, msg)
		case InvalidRequest:
			failure = Failf(string(state), "CertificateRequest %s/%s is invalid: %s", cr.Namespace, cr.Name, msg)
		case Failed:
			failure = Failf(string(state), "CertificateRequest %s/%s failed: %s", cr.Namespace, cr.Name, msg)
		}
		if failure != nil {
			return i.fail(ctx, req.Owner, cause, failure)
		}
	}
	deadline := p.created.Add(req.Timeout)
	if !now.Before(deadline) {
		return i.fail(ctx, req.Owner, cause, Failf(ReasonTimeout, "CertificateRequest %s/%s was not signed within %s", i.namespace, name, req.Timeout))
	}
	return Outcome{RetryAfter: deadline.Sub(now)}, nil
}

// create makes a key and asks cert-manager to sign it, in the place in
// flight the caller was admitted to; a request not made gives it up.
func (i *Issuer) create(ctx context.Context, req Request, name string) (Outcome, error) {
	started := false
	defer func() {
		if !started {
			i.inFlight.end(req.Owner)
		}
	}()
	// A request of this name that holds no key here was made by a process
	// that died: its key went with it, so it can never be used.
	var stale cmapi.CertificateRequest
	err := i.client.Get(ctx, types.NamespacedName{Namespace: i.namespace, Name: name}, &stale)
	if err == nil {
		if err := i.delete(ctx, &stale); err != nil {
			return Outcome{}, err
		}
	} else if !apierrors.IsNotFound(err) {
		return Outcome{}, err
	}

	key, err := generateKey(req.KeyAlgorithm)
	if err != nil {
		return Outcome{}, err
	}
	usages := req.Usages
	if usages == nil {
		usages = WorkloadUsages
	}
	csr, err := certificateRequestPEM(key, req.URIs, usages)
	if err != nil {
		return Outcome{}, fmt.Errorf("encoding the CSR: %w", err)
	}
	labels := maps.Clone(req.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[kuma.ManagedByLabel] = kuma.ManagedByValue
	annotations := maps.Clone(i.annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	maps.Copy(annotations, req.Annotations)
	// meshcert's own come last: no fixed annotation may hide them.
	annotations[OwnerAnnotation] = req.Owner.String()
	annotations[IdentitiesAnnotation] = strings.Join(pki.URLsToString(req.URIs), ",")
	if req.KeepIssued {
		annotations[AuditAnnotation] = "true"
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: i.namespace, Labels: labels, Annotations: annotations},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			IssuerRef: req.IssuerRef,
			Duration:  &metav1.Duration{Duration: req.Duration},
			Usages:    usages,
		},
	}
	if err := i.client.Create(ctx, cr); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// The cache had not seen the old request yet; it is deleted on the next step.
			return Outcome{RetryAfter: time.Second}, nil
		}
		return Outcome{}, fmt.Errorf("creating CertificateRequest %s/%s: %w", i.namespace, name, err)
	}
	i.inFlight.start(req.Owner, &pending{name: name, key: key, created: i.clock.Now()})
	started = true
	logf.FromContext(ctx).V(1).Info("Created CertificateRequest", "request", name, "issuer", req.IssuerRef.Name)
	return Outcome{RetryAfter: req.Timeout}, nil
}

// deliver checks an issued certificate against the request and the key, and
// hands it to the caller; once delivered, the request is done.
func (i *Issuer) deliver(ctx context.Context, req Request, cause string, cr *cmapi.CertificateRequest, p *pending, deliver Deliver) (Outcome, error) {
	cert, failure := i.check(req, cr, p)
	if failure == nil {
		if err := deliver(ctx, cert); err != nil {
			if !errors.As(err, &failure) {
				return Outcome{}, err
			}
		}
	}
	if failure != nil {
		return i.fail(ctx, req.Owner, cause, failure)
	}
	if !req.KeepIssued {
		if err := i.delete(ctx, cr); err != nil {
			return Outcome{}, err
		}
	}
	i.inFlight.end(req.Owner)
	i.backoff.Forget(req.Owner)
	issuanceSeconds.Observe(i.clock.Since(p.created).Seconds())
	return Outcome{Certificate: cert}, nil
}

// check verifies an issued certificate before anyone uses it: it is for the
// key, has exactly the requested URIs, and chains to the roots.
func (i *Issuer) check(req Request, cr *cmapi.CertificateRequest, p *pending) (*Certificate, *Failure) {
	chain, err := pki.DecodeX509CertificateChainBytes(cr.Status.Certificate)
	if err != nil {
		return nil, Failf(ReasonInvalidCertificate, "CertificateRequest %s/%s holds no valid certificate chain: %v", cr.Namespace, cr.Name, err)
	}
	leaf := chain[0]
	if ok, err := pki.PublicKeyMatchesCertificate(p.key.Public(), leaf); err != nil || !ok {
		return nil, Failf(ReasonCertificateMismatch, "the certificate of CertificateRequest %s/%s is not for the requested key", cr.Namespace, cr.Name)
	}
	if !SameURIs(leaf.URIs, req.URIs) {
		return nil, Failf(ReasonCertificateMismatch, "the certificate of CertificateRequest %s/%s has URI SANs %v, not the requested %v", cr.Namespace, cr.Name, leaf.URIs, req.URIs)
	}
	roots := req.Roots
	if roots == nil {
		roots = cr.Status.CA
	}
	if len(roots) == 0 {
		return nil, Failf(ReasonMissingCA, "the issuer set no status.ca on CertificateRequest %s/%s and no roots were given to verify it against", cr.Namespace, cr.Name)
	}
	root, err := VerifyChain(chain, roots, i.clock.Now())
	if err != nil {
		return nil, Failf(ReasonUntrustedCertificate, "the certificate of CertificateRequest %s/%s does not verify against its CA: %v", cr.Namespace, cr.Name, err)
	}
	return &Certificate{
		ChainPEM: cr.Status.Certificate,
		Chain:    chain,
		Key:      p.key,
		Root:     root,
		Request:  types.NamespacedName{Namespace: cr.Namespace, Name: cr.Name},
	}, nil
}

// fail ends an attempt: it deletes the owner's requests and backs off.
func (i *Issuer) fail(ctx context.Context, owner Owner, cause string, f *Failure) (Outcome, error) {
	if err := i.cleanup(ctx, owner, ""); err != nil {
		return Outcome{}, err
	}
	delay := i.backoff.Record(owner, cause, i.clock.Now())
	return Outcome{Failure: f, RetryAfter: delay}, nil
}

// Cleanup deletes the owner's requests and forgets its request in flight:
// the owner is gone, up to date, or no longer to be issued for. Issued
// requests kept for auditing stay.
func (i *Issuer) Cleanup(ctx context.Context, owner Owner) error {
	return i.cleanup(ctx, owner, "")
}

// cleanup deletes the owner's requests except keep, and forgets a request in
// flight that is not keep.
func (i *Issuer) cleanup(ctx context.Context, owner Owner, keep string) error {
	if p := i.inFlight.get(owner); p != nil && p.name != keep {
		i.inFlight.end(owner)
	}
	var list cmapi.CertificateRequestList
	if err := i.client.List(ctx, &list, client.InNamespace(i.namespace), client.MatchingFields{OwnerIndex: owner.String()}); err != nil {
		return err
	}
	for n := range list.Items {
		cr := &list.Items[n]
		if cr.Name == keep {
			continue
		}
		if state, _ := Interpret(cr); state == Issued && cr.Annotations[AuditAnnotation] == "true" {
			continue
		}
		if err := i.delete(ctx, cr); err != nil {
			return err
		}
	}
	return nil
}

func (i *Issuer) delete(ctx context.Context, cr *cmapi.CertificateRequest) error {
	err := i.client.Delete(ctx, cr, client.Preconditions{UID: &cr.UID})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // Already gone, or replaced by a newer request of that name.
	}
	return err
}

// requestUsesKey tells whether a request was made for this key.
func requestUsesKey(cr *cmapi.CertificateRequest, key crypto.Signer) bool {
	csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
	if err != nil {
		return false
	}
	ok, err := pki.PublicKeyMatchesCSR(key.Public(), csr)
	return err == nil && ok
}
