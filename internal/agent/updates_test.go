package agent

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestUpdates(t *testing.T) {
	const web, db = "spiffe://example.com/web", "spiffe://example.com/db"
	tests := map[string]struct {
		notify func(*Updates)
		woken  map[string]bool
	}{
		"a change of one identity wakes its subscribers only": {
			notify: func(u *Updates) { u.Notify(web) },
			woken:  map[string]bool{web: true, db: false},
		},
		"a change of the bundles wakes everyone": {
			notify: func(u *Updates) { u.NotifyAll() },
			woken:  map[string]bool{web: true, db: true},
		},
		"a change of an identity nobody subscribes to wakes nobody": {
			notify: func(u *Updates) { u.Notify("spiffe://example.com/other") },
			woken:  map[string]bool{web: false, db: false},
		},
		"changes while nobody reads are one wake-up": {
			notify: func(u *Updates) { u.Notify(web); u.Notify(web); u.NotifyAll() },
			woken:  map[string]bool{web: true, db: true},
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			u := NewUpdates()
			subs := map[string][]<-chan struct{}{}
			for id := range test.woken {
				for range 2 { // Two connections of one identity.
					ch, cancel := u.subscribe(id)
					defer cancel()
					subs[id] = append(subs[id], ch)
				}
			}
			test.notify(u)
			for id, chans := range subs {
				for _, ch := range chans {
					if got := received(ch); got != test.woken[id] {
						t.Errorf("a subscriber of %s woken: %v, want %v", id, got, test.woken[id])
					}
					// What was read is over: the next wake-up is the next change's.
					if received(ch) {
						t.Errorf("a subscriber of %s woken twice", id)
					}
				}
			}
		})
	}
}

func TestUpdatesCancel(t *testing.T) {
	const web = "spiffe://example.com/web"
	u := NewUpdates()
	gone, cancel := u.subscribe(web)
	stays, cancelStays := u.subscribe(web)
	defer cancelStays()
	cancel()
	u.Notify(web)
	if received(gone) {
		t.Error("a cancelled subscription was woken")
	}
	if !received(stays) {
		t.Error("cancelling one subscription of an identity ended the other")
	}
	cancelStays()
	if len(u.subs) != 0 {
		t.Errorf("%d identities still held after their last subscription ended", len(u.subs))
	}
}

// A connection learns of its certificate's delivery through its one
// subscription, and waits for it until its call ends.
func TestWatch(t *testing.T) {
	s, id, _ := newTestServer(t)
	svid := s.SVIDs.ids[webID].svid
	s.SVIDs.ids[webID].svid = nil
	w := s.watch(id)
	defer w.close()

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.await(ended); status.Code(err) != codes.Canceled {
		t.Fatalf("await before the certificate, on an ended call: %v, want Canceled", err)
	}
	if received(w.changed) {
		t.Fatal("woken before any change")
	}
	s.SVIDs.mu.Lock()
	s.SVIDs.ids[webID].svid = svid
	s.SVIDs.mu.Unlock()
	s.Updates.Notify(webID)
	if !received(w.changed) {
		t.Fatal("not woken by its certificate's delivery")
	}
	if got := w.current(); got.svid != svid {
		t.Fatalf("serves %v, want the delivered certificate", got.svid)
	}
	if got, err := w.await(ended); got != svid || err != nil {
		t.Fatalf("await = %v, %v; want the delivered certificate", got, err)
	}
}

func received(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
