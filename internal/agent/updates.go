package agent

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
)

// Updates tell the connections of one identity that its certificate
// changed, and every connection that the trust bundles, which all of them
// serve, changed: an issuance on a node of many workloads wakes only the
// connections of that workload. SDS and the Workload API learn of changes
// through it alone, each connection by one subscription for its life. They
// also tell connections to check their entitlement again, when what
// entitled them may have changed.
type Updates struct {
	mu   sync.Mutex
	subs map[string]map[*subscription]struct{}
}

// subscription is one connection's: changed receives after the identity's
// changes; recheck is set when the connection's entitlement is to be
// checked again.
type subscription struct {
	changed  chan struct{}
	workload types.UID
	recheck  bool
}

// NewUpdates returns Updates with no subscriber.
func NewUpdates() *Updates { return &Updates{subs: map[string]map[*subscription]struct{}{}} }

// subscribe returns the subscription of a connection of the identity, for
// the workload (its Pod's or Dataplane's UID), until cancel is called.
// Changes while nobody reads are one wake-up, so that a notifier never
// blocks on a slow connection.
func (u *Updates) subscribe(spiffeID string, workload types.UID) (sub *subscription, cancel func()) {
	sub = &subscription{changed: make(chan struct{}, 1), workload: workload}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.subs[spiffeID] == nil {
		u.subs[spiffeID] = map[*subscription]struct{}{}
	}
	u.subs[spiffeID][sub] = struct{}{}
	return sub, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		delete(u.subs[spiffeID], sub)
		if len(u.subs[spiffeID]) == 0 {
			delete(u.subs, spiffeID)
		}
	}
}

// Notify wakes the subscribers of one identity.
func (u *Updates) Notify(spiffeID string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for sub := range u.subs[spiffeID] {
		wake(sub.changed)
	}
}

// NotifyAll wakes every subscriber.
func (u *Updates) NotifyAll() {
	u.each(func(*subscription) bool { return true }, false)
}

// Recheck has the connections of one workload check their entitlement again.
func (u *Updates) Recheck(workload types.UID) {
	u.each(func(sub *subscription) bool { return sub.workload == workload }, true)
}

// RecheckIdentity has the connections of one identity check their
// entitlement again.
func (u *Updates) RecheckIdentity(spiffeID string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for sub := range u.subs[spiffeID] {
		sub.recheck = true
		wake(sub.changed)
	}
}

// RecheckAll has every connection check its entitlement again.
func (u *Updates) RecheckAll() {
	u.each(func(*subscription) bool { return true }, true)
}

func (u *Updates) each(match func(*subscription) bool, recheck bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, subs := range u.subs {
		for sub := range subs {
			if match(sub) {
				sub.recheck = sub.recheck || recheck
				wake(sub.changed)
			}
		}
	}
}

// recheckDue reports whether the subscription's entitlement is to be
// checked again, and clears it.
func (u *Updates) recheckDue(sub *subscription) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	due := sub.recheck
	sub.recheck = false
	return due
}

// WatchEntitlement has connections check their entitlement again when what
// it comes from changes: every connection on a change of a MeshIdentity,
// which may now select a workload or no longer; a workload's own on a
// change of its Pod, at once and again once Kuma has rewritten the Pod's
// Dataplane; every connection on a change of a Dataplane with the unix
// attestor. A Dataplane of a Pod is not watched: it is checked again after
// its Pod changes and before each renewal.
func (u *Updates) WatchEntitlement(ctx context.Context, informers cache.Informers, workload client.Object) error {
	identities, err := informers.GetInformer(ctx, &kuma.MeshIdentityResource{})
	if err != nil {
		return err
	}
	if _, err := identities.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { u.RecheckAll() },
		UpdateFunc: func(old, o any) {
			if entitlesOtherwise(old, o) {
				u.RecheckAll()
			}
		},
		DeleteFunc: func(any) { u.RecheckAll() },
	}); err != nil {
		return err
	}
	workloads, err := informers.GetInformer(ctx, workload)
	if err != nil {
		return err
	}
	if _, unix := workload.(*kuma.DataplaneResource); unix {
		// With the unix attestor a Dataplane entitles a Unix user: one added,
		// moved or removed may change any connection's entitlement, and
		// Dataplanes there are few.
		_, err = workloads.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { u.RecheckAll() },
			UpdateFunc: func(old, o any) {
				if entitlesOtherwise(old, o) {
					u.RecheckAll()
				}
			},
			DeleteFunc: func(any) { u.RecheckAll() },
		})
		return err
	}
	recheck := func(o any) {
		if tombstone, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = tombstone.Obj
		}
		if obj, ok := o.(client.Object); ok {
			uid := obj.GetUID()
			u.Recheck(uid)
			// Kuma's pod converter rewrites the Pod's Dataplane after the
			// Pod changed: look again once it has.
			time.AfterFunc(dataplaneSettle, func() { u.Recheck(uid) })
		}
	}
	_, err = workloads.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, o any) {
			if entitlesOtherwise(old, o) {
				recheck(o)
			}
		},
		DeleteFunc: recheck,
	})
	return err
}

// dataplaneSettle is how long after a Pod's change its connections check
// their entitlement a second time, when Kuma has rewritten its Dataplane.
const dataplaneSettle = 5 * time.Second

// entitlesOtherwise reports whether an update may change whom an object
// entitles to what: its spec, labels, annotations or owners, or its
// deletion. A change of its status alone, or a resync, does not: those
// would have every connection read its Dataplane for nothing.
func entitlesOtherwise(old, updated any) bool {
	o, ok := old.(client.Object)
	n, ok2 := updated.(client.Object)
	if !ok || !ok2 {
		return true
	}
	return o.GetGeneration() != n.GetGeneration() || !maps.Equal(o.GetLabels(), n.GetLabels()) ||
		!maps.Equal(o.GetAnnotations(), n.GetAnnotations()) || !slices.EqualFunc(o.GetOwnerReferences(), n.GetOwnerReferences(), ownerEqual) ||
		(o.GetDeletionTimestamp() == nil) != (n.GetDeletionTimestamp() == nil)
}

func ownerEqual(a, b metav1.OwnerReference) bool {
	return a.UID == b.UID && ptr.Deref(a.Controller, false) == ptr.Deref(b.Controller, false)
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // A wake-up is pending already.
	}
}

// watch is one connection's hold on its identity: the identity's
// certificate is kept while the watch is open, and changed receives after
// each change of what the connection's answers are built from, and when its
// entitlement is to be checked again.
type watch struct {
	changed <-chan struct{}
	s       *Server
	id      *Identity
	sub     *subscription
	cancel  func()
	release func()
}

// watch opens a connection's watch of its identity; close ends it.
func (s *Server) watch(id *Identity) *watch {
	sub, cancel := s.Updates.subscribe(id.SpiffeID, workloadUID(id))
	return &watch{changed: sub.changed, s: s, id: id, sub: sub, cancel: cancel, release: s.SVIDs.Want(id)}
}

func workloadUID(id *Identity) types.UID {
	if id.Workload == nil {
		return ""
	}
	return id.Workload.GetUID()
}

func (w *watch) close() {
	w.release()
	w.cancel()
}

// recheck checks the caller's entitlement again, when that is due. A
// caller no longer entitled to the identity it is served, or to any, gets
// PermissionDenied; one whose identity is now issued otherwise, by another
// issuer for example, has it re-issued. A failure to check keeps what the
// caller holds: the API server's trouble is not the workload's.
func (w *watch) recheck(ctx context.Context) error {
	if !w.s.Updates.recheckDue(w.sub) {
		return nil
	}
	id, err := w.s.identityOf(ctx)
	switch {
	case status.Code(err) == codes.PermissionDenied:
		return err
	case err != nil:
		return nil // Logged by identityOf.
	case id.SpiffeID != w.id.SpiffeID:
		w.s.Log.V(1).Info("Ended a stream of an identity its caller no longer has", "spiffeID", w.id.SpiffeID, "now", id.SpiffeID)
		refused(refusedNoLongerEntitled)
		return status.Error(codes.PermissionDenied, errNoLongerEntitled)
	case !sameIssuance(id, w.id):
		release := w.s.SVIDs.Want(id)
		w.release()
		w.id, w.release = id, release
	}
	return nil
}

// served is what an answer is built from, besides what was asked: the
// identity's certificate, nil until it is issued, and the generation of the
// bundles. An answer built from the same holds.
type served struct {
	svid    *SVID
	bundles uint64
}

// current is what the identity is served from now. A change after it is
// read wakes changed.
func (w *watch) current() served {
	return served{svid: w.s.SVIDs.Get(w.id.SpiffeID), bundles: w.s.Bundles.Generation()}
}

// await waits until the identity has a certificate.
func (w *watch) await(ctx context.Context) (*SVID, error) {
	for {
		if svid := w.current().svid; svid != nil {
			return svid, nil
		}
		select {
		case <-w.changed:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		// A caller that waits for its first certificate may lose its
		// entitlement meanwhile, as a stream may.
		if err := w.recheck(ctx); err != nil {
			return nil, err
		}
	}
}
