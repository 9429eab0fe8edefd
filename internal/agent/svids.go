package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// NodeLabel marks the CertificateRequests of one node's agent, so that each
// agent caches its own only.
const NodeLabel = "meshcert.io/agent-node"

// SVID is an identity's current certificate, as it is served: go-spiffe's
// X509-SVID, which the Workload API serves, with what SDS serves, the chain
// as the issuer returned it and the key, in PEM, and the root it verified to.
type SVID struct {
	x509svid.SVID
	Identity         *Identity
	ChainPEM, KeyPEM []byte
	Root             *x509.Certificate
}

func newSVID(id *Identity, spiffeID spiffeid.ID, c *issuance.Certificate) (*SVID, error) {
	key, err := c.KeyPEM()
	if err != nil {
		return nil, err
	}
	return &SVID{
		SVID:     x509svid.SVID{ID: spiffeID, Certificates: c.Chain, PrivateKey: c.Key},
		Identity: id, ChainPEM: c.ChainPEM, KeyPEM: key, Root: c.Root,
	}, nil
}

// Leaf is the certificate itself.
func (s *SVID) Leaf() *x509.Certificate { return s.Certificates[0] }

// idleGrace is how long an identity's certificate outlives its last
// connection, so that a reconnecting workload gets it at once.
const idleGrace = time.Minute

// SVIDs keeps one certificate per identity on the node, shared by every
// connection of that identity: issued through the issuance package while
// some connection wants it, renewed at 4/5 of its lifetime, and dropped a
// while after the last connection ends.
type SVIDs struct {
	issuer   *issuance.Issuer
	node     string
	recorder events.EventRecorder
	clock    clock.PassiveClock
	timeout  time.Duration
	bundles  *Bundles
	updates  *Updates
	wake     chan event.TypedGenericEvent[string]
	retries  issuance.BackoffPolicy

	// overflow holds the identities woken while wake was full, each once,
	// until drainOverflow hands them over; kick tells it there are some.
	overflowMu sync.Mutex
	overflow   map[string]struct{}
	kick       chan struct{}

	mu  sync.Mutex
	ids map[string]*wanted
}

type wanted struct {
	identity  *Identity
	users     int
	idleSince time.Time
	svid      *SVID
	// warned is the serial of the certificate whose coming expiry was
	// reported, so that it is reported once.
	warned string
	// rechecked is the serial of the certificate due for renewal whose
	// connections were told to check their entitlement first.
	rechecked string
}

// recheckGrace is how long a renewal waits for the identity's connections
// to check their entitlement again: a caller no longer entitled ends its
// connection, and an identity nobody holds is not renewed.
const recheckGrace = 2 * time.Second

// sameIssuance reports whether two resolutions of one identity issue it
// alike: otherwise, after a change of its MeshIdentity's issuer for
// example, it is issued again at once.
func sameIssuance(a, b *Identity) bool {
	return a.IssuerRef == b.IssuerRef && a.Duration == b.Duration && a.KeyAlgorithm == b.KeyAlgorithm && a.MeshIdentity == b.MeshIdentity
}

// SVIDOptions configure SVIDs.
type SVIDOptions struct {
	Client          client.Client
	SystemNamespace string
	Node            string
	Recorder        events.EventRecorder
	Clock           clock.PassiveClock
	RequestTimeout  time.Duration
	MaxInFlight     int
	Backoff         issuance.BackoffPolicy
	Annotations     map[string]string
	Bundles         *Bundles
	Updates         *Updates
}

// NewSVIDs returns SVIDs.
func NewSVIDs(o SVIDOptions) *SVIDs {
	s := &SVIDs{
		node: o.Node, recorder: o.Recorder, clock: o.Clock, timeout: o.RequestTimeout,
		bundles: o.Bundles, updates: o.Updates, retries: o.Backoff,
		wake:     make(chan event.TypedGenericEvent[string], 1024),
		overflow: map[string]struct{}{}, kick: make(chan struct{}, 1),
		ids: map[string]*wanted{},
	}
	s.issuer = issuance.New(issuance.Options{
		Client: o.Client, Namespace: o.SystemNamespace, Clock: o.Clock, MaxInFlight: o.MaxInFlight,
		Backoff: issuance.NewBackoff(o.Backoff), Annotations: o.Annotations,
		OnTurn: func(owner issuance.Owner) { s.enqueue(owner.Name) },
	})
	return s
}

func (s *SVIDs) enqueue(id string) {
	select {
	case s.wake <- event.TypedGenericEvent[string]{Object: id}:
		return
	default:
	}
	// Full: the reconciler is behind. The identity waits, once however often
	// it is woken, for drainOverflow; no goroutine is left blocked.
	s.overflowMu.Lock()
	s.overflow[id] = struct{}{}
	s.overflowMu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// drainOverflow hands the identities woken while wake was full to the
// reconciler as it catches up, until ctx ends.
func (s *SVIDs) drainOverflow(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		s.overflowMu.Lock()
		ids := slices.Collect(maps.Keys(s.overflow))
		clear(s.overflow)
		s.overflowMu.Unlock()
		for _, id := range ids {
			select {
			case s.wake <- event.TypedGenericEvent[string]{Object: id}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// Want registers a connection's interest in an identity until release is
// called; its certificate is issued if there is none yet.
func (s *SVIDs) Want(id *Identity) (release func()) {
	s.mu.Lock()
	w := s.ids[id.SpiffeID]
	if w == nil {
		w = &wanted{}
		s.ids[id.SpiffeID] = w
	}
	w.identity = id
	w.users++
	s.mu.Unlock()
	s.enqueue(id.SpiffeID)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			w.users--
			if w.users == 0 {
				w.idleSince = s.clock.Now()
			}
			s.mu.Unlock()
			s.enqueue(id.SpiffeID)
		})
	}
}

// Get returns the identity's current certificate, or nil.
// A certificate past its expiry is never served: the workload has no
// identity until the renewal succeeds.
func (s *SVIDs) Get(spiffeID string) *SVID {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.ids[spiffeID]; w != nil && w.svid != nil && s.clock.Now().Before(w.svid.Leaf().NotAfter) {
		return w.svid
	}
	return nil
}

// SetupWithManager runs the identities' issuance as a controller, woken by
// Want, by renewals and by the watch on the node's CertificateRequests.
func (s *SVIDs) SetupWithManager(mgr ctrl.Manager, workers int) error {
	if err := mgr.Add(manager.RunnableFunc(s.drainOverflow)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("agent-svids").
		WatchesRawSource(source.TypedChannel(s.wake, handler.TypedEnqueueRequestsFromMapFunc(func(_ context.Context, id string) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: id}}}
		}))).
		Watches(&cmapi.CertificateRequest{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			owner, ok := issuance.OwnerOf(o)
			if !ok || owner.Kind != issuance.OwnerAgent || owner.Scope != s.node {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: owner.Name}}}
		})).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers, RateLimiter: s.retries.RateLimiter()}).
		Complete(s)
}

// Reconcile brings one identity's certificate in line: issue it, renew it,
// or, once nobody wants it, drop it.
func (s *SVIDs) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	spiffeID := req.Name
	owner := issuance.AgentOwner(s.node, spiffeID)
	now := s.clock.Now()
	s.mu.Lock()
	w := s.ids[spiffeID]
	var id *Identity
	var current *SVID
	idleFor := time.Duration(-1)
	if w != nil {
		id, current = w.identity, w.svid
		if w.users == 0 {
			idleFor = now.Sub(w.idleSince)
		}
	}
	if w != nil && idleFor >= idleGrace {
		delete(s.ids, spiffeID)
		dropExpiry(spiffeID)
		w = nil
	}
	s.mu.Unlock()
	if w == nil {
		return ctrl.Result{}, s.issuer.Cleanup(ctx, owner)
	}
	if idleFor >= 0 {
		// Nobody holds it: what is held is kept for a caller that comes
		// back, but nothing is issued for nobody.
		return ctrl.Result{RequeueAfter: idleGrace - idleFor}, nil
	}

	var replaces string
	expiresIn := time.Duration(0)
	if current != nil {
		leaf := current.Leaf()
		same := sameIssuance(current.Identity, id)
		if renewAt := issuance.RenewalTime(leaf, s.node+spiffeID); same && now.Before(renewAt) {
			return ctrl.Result{RequeueAfter: renewAt.Sub(now)}, nil
		}
		replaces = leaf.SerialNumber.String()
		if same && s.recheckFirst(spiffeID, replaces) {
			return ctrl.Result{RequeueAfter: recheckGrace}, nil
		}
		if expiresIn = leaf.NotAfter.Sub(now); expiresIn <= 0 {
			// Expired while its renewal failed: streams stop getting it now.
			s.updates.Notify(spiffeID)
		}
	}
	sid, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return ctrl.Result{}, nil // Checked as it was rendered, so never; nothing to retry.
	}
	out, err := s.issuer.Step(ctx, issuance.Request{
		Owner:        owner,
		NamePrefix:   "agent." + s.node,
		URIs:         []*url.URL{sid.URL()},
		KeyAlgorithm: id.KeyAlgorithm,
		Usages:       issuance.SVIDUsages(id.KeyAlgorithm),
		IssuerRef:    id.IssuerRef,
		Duration:     id.Duration,
		Timeout:      s.timeout,
		Roots:        s.bundles.RootsPEM(id.Mesh, id.TrustDomain),
		Replaces:     replaces,
		Labels:       map[string]string{NodeLabel: kuma.LabelValue(s.node), kuma.ManagedMeshLabel: kuma.LabelValue(id.Mesh)},
		Annotations:  map[string]string{kuma.MeshIdentityAnnotation: id.MeshIdentity.Name, kuma.DataplaneAnnotation: id.Dataplane.String()},
	}, func(_ context.Context, c *issuance.Certificate) error {
		svid, err := newSVID(id, sid, c)
		if err != nil {
			return err
		}
		s.mu.Lock()
		if w := s.ids[spiffeID]; w != nil {
			w.svid = svid
			servedExpiry(id.Mesh, spiffeID, svid.Leaf().NotAfter)
		}
		s.mu.Unlock()
		s.updates.Notify(spiffeID)
		return nil
	})
	switch {
	case err != nil:
		return ctrl.Result{}, err
	case out.Certificate != nil:
		svidIssuances.WithLabelValues(issuanceKind(current), resultSuccess).Inc()
		logf.FromContext(ctx).V(1).Info("Issued an identity", "spiffeID", spiffeID, "notAfter", out.Certificate.Leaf().NotAfter)
		renewAt := issuance.RenewalTime(out.Certificate.Leaf(), s.node+spiffeID)
		return ctrl.Result{RequeueAfter: renewAt.Sub(s.clock.Now())}, nil
	case out.Failure != nil:
		svidIssuances.WithLabelValues(issuanceKind(current), resultFailure).Inc()
		s.report(ctx, id, out.Failure, out.RetryAfter)
		if expiresIn > 0 {
			s.warnExpiry(spiffeID, current, out.Failure.Reason)
		}
	case expiresIn > 0 && expiresIn <= out.RetryAfter:
		// The renewal's request, or its backoff, outlasts the certificate.
		s.warnExpiry(spiffeID, current, "its request is not signed yet")
	}
	// Wake at the expiry too, so that streams stop serving it.
	return ctrl.Result{RequeueAfter: issuance.Soonest(out.RetryAfter, expiresIn)}, nil
}

// firstFor reports whether the identity's mark, one of its per-certificate
// notes, is not yet serial, and makes it so: what it marks is done once per
// certificate.
func (s *SVIDs) firstFor(spiffeID, serial string, mark func(*wanted) *string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.ids[spiffeID]
	if w == nil || *mark(w) == serial {
		return false
	}
	*mark(w) = serial
	return true
}

// recheckFirst tells, once per certificate due for renewal, the
// identity's connections to check their entitlement again, and reports
// whether it did: the renewal then waits for them.
func (s *SVIDs) recheckFirst(spiffeID, serial string) bool {
	first := s.firstFor(spiffeID, serial, func(w *wanted) *string { return &w.rechecked })
	if first {
		s.updates.RecheckIdentity(spiffeID)
	}
	return first
}

// warnExpiry tells, once per certificate, on the MeshIdentity and the
// workload, that a certificate due for renewal is not renewed yet and when
// its workloads lose their identity.
func (s *SVIDs) warnExpiry(spiffeID string, current *SVID, why string) {
	if !s.firstFor(spiffeID, current.Leaf().SerialNumber.String(), func(w *wanted) *string { return &w.warned }) {
		return
	}
	id := current.Identity
	note := fmt.Sprintf("%s: the certificate expires at %s and is not renewed yet (%s); its workloads lose their identity then unless the issuer recovers",
		id.SpiffeID, current.Leaf().NotAfter.UTC().Format(time.RFC3339), why)
	mid := meshIdentityRef(id)
	if id.Workload != nil {
		s.recorder.Eventf(id.Workload, nil, corev1.EventTypeWarning, "IdentityExpiring", "RenewIdentity", "%s", note)
	}
	s.recorder.Eventf(mid, id.Workload, corev1.EventTypeWarning, "IdentityExpiring", "RenewIdentity", "%s", note)
}

// meshIdentityRef is the identity's MeshIdentity, enough to be an Event's
// subject.
func meshIdentityRef(id *Identity) *kuma.MeshIdentityResource {
	mid := &kuma.MeshIdentityResource{}
	mid.Namespace, mid.Name = id.MeshIdentity.Namespace, id.MeshIdentity.Name
	mid.APIVersion, mid.Kind = kuma.GroupVersion.String(), "MeshIdentity"
	return mid
}

// report tells of a failed issuance on the MeshIdentity and on the
// workload, with cert-manager's message.
func (s *SVIDs) report(ctx context.Context, id *Identity, f *issuance.Failure, retryIn time.Duration) {
	note := fmt.Sprintf("%s: %s; retrying in %s", id.SpiffeID, f.Message, retryIn)
	mid := meshIdentityRef(id)
	if id.Workload != nil {
		s.recorder.Eventf(id.Workload, nil, corev1.EventTypeWarning, f.Reason, "IssueIdentity", "%s", note)
	}
	s.recorder.Eventf(mid, id.Workload, corev1.EventTypeWarning, f.Reason, "IssueIdentity", "%s", note)
	logf.FromContext(ctx).Info("Issuance failed", "spiffeID", id.SpiffeID, "reason", f.Reason, "message", f.Message, "retryIn", retryIn)
}
