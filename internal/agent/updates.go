package agent

import (
	"context"
	"sync"

	"google.golang.org/grpc/status"
)

// Updates tell the connections of one identity that its certificate
// changed, and every connection that the trust bundles, which all of them
// serve, changed: an issuance on a node of many workloads wakes only the
// connections of that workload. SDS and the Workload API learn of changes
// through it alone, each connection by one subscription for its life.
type Updates struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

// NewUpdates returns Updates with no subscriber.
func NewUpdates() *Updates { return &Updates{subs: map[string]map[chan struct{}]struct{}{}} }

// subscribe returns a channel that receives after the identity's changes,
// until cancel is called. Changes while nobody reads are one wake-up, so
// that a notifier never blocks on a slow connection.
func (u *Updates) subscribe(spiffeID string) (changed <-chan struct{}, cancel func()) {
	ch := make(chan struct{}, 1)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.subs[spiffeID] == nil {
		u.subs[spiffeID] = map[chan struct{}]struct{}{}
	}
	u.subs[spiffeID][ch] = struct{}{}
	return ch, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		delete(u.subs[spiffeID], ch)
		if len(u.subs[spiffeID]) == 0 {
			delete(u.subs, spiffeID)
		}
	}
}

// Notify wakes the subscribers of one identity.
func (u *Updates) Notify(spiffeID string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for ch := range u.subs[spiffeID] {
		wake(ch)
	}
}

// NotifyAll wakes every subscriber.
func (u *Updates) NotifyAll() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, subs := range u.subs {
		for ch := range subs {
			wake(ch)
		}
	}
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // A wake-up is pending already.
	}
}

// watch is one connection's hold on its identity: the identity's
// certificate is kept while the watch is open, and changed receives after
// each change of what the connection's answers are built from.
type watch struct {
	changed <-chan struct{}
	s       *Server
	id      *Identity
	cancel  func()
	release func()
}

// watch opens a connection's watch of its identity; close ends it.
func (s *Server) watch(id *Identity) *watch {
	changed, cancel := s.Updates.subscribe(id.SpiffeID)
	return &watch{changed: changed, s: s, id: id, cancel: cancel, release: s.SVIDs.Want(id)}
}

func (w *watch) close() {
	w.release()
	w.cancel()
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
	}
}
