package agent

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
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
					sub, cancel := u.subscribe(id, "")
					defer cancel()
					subs[id] = append(subs[id], sub.changed)
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

// TestRecheck: a change of what entitles a workload has its connections,
// and only those, check their entitlement again, once.
func TestRecheck(t *testing.T) {
	const web, db = "spiffe://example.com/web", "spiffe://example.com/db"
	connections := map[string]struct {
		spiffeID string
		workload types.UID
	}{"web-1": {web, "pod-web-1"}, "web-2": {web, "pod-web-2"}, "db": {db, "pod-db"}}
	tests := map[string]struct {
		recheck func(*Updates)
		due     map[string]bool
	}{
		"a change of a Pod": {recheck: func(u *Updates) { u.Recheck("pod-web-1") }, due: map[string]bool{"web-1": true}},
		"a renewal due":     {recheck: func(u *Updates) { u.RecheckIdentity(web) }, due: map[string]bool{"web-1": true, "web-2": true}},
		"a change of a MeshIdentity": {
			recheck: func(u *Updates) { u.RecheckAll() }, due: map[string]bool{"web-1": true, "web-2": true, "db": true},
		},
		"a change of the bundles": {recheck: func(u *Updates) { u.NotifyAll() }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u := NewUpdates()
			subs := map[string]*subscription{}
			for name, c := range connections {
				sub, cancel := u.subscribe(c.spiffeID, c.workload)
				defer cancel()
				subs[name] = sub
			}
			tc.recheck(u)
			for name, sub := range subs {
				if tc.due[name] && !received(sub.changed) {
					t.Errorf("%s not woken", name)
				}
				if got := u.recheckDue(sub); got != tc.due[name] {
					t.Errorf("%s: recheck due %v, want %v", name, got, tc.due[name])
				}
				if u.recheckDue(sub) {
					t.Errorf("%s: recheck due twice", name)
				}
			}
		})
	}
}

func TestEntitlesOtherwise(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Generation: 1, Labels: map[string]string{"app": "web"},
		OwnerReferences: []metav1.OwnerReference{{UID: "rs-1", Controller: ptr.To(true)}}}}
	tests := map[string]struct {
		change func(*corev1.Pod)
		want   bool
	}{
		"a resync":              {change: func(*corev1.Pod) {}},
		"its status alone":      {change: func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning }},
		"its labels":            {change: func(p *corev1.Pod) { p.Labels["app"] = "db" }, want: true},
		"its annotations":       {change: func(p *corev1.Pod) { p.Annotations = map[string]string{"kuma.io/workload": "db"} }, want: true},
		"its spec (generation)": {change: func(p *corev1.Pod) { p.Generation++ }, want: true},
		"its controller":        {change: func(p *corev1.Pod) { p.OwnerReferences[0].UID = "rs-2" }, want: true},
		"its deletion":          {change: func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }, want: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			updated := pod.DeepCopy()
			tc.change(updated)
			if got := entitlesOtherwise(pod, updated); got != tc.want {
				t.Errorf("entitlesOtherwise = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestUpdatesCancel(t *testing.T) {
	const web = "spiffe://example.com/web"
	u := NewUpdates()
	gone, cancel := u.subscribe(web, "")
	stays, cancelStays := u.subscribe(web, "")
	defer cancelStays()
	cancel()
	u.Notify(web)
	if received(gone.changed) {
		t.Error("a cancelled subscription was woken")
	}
	if !received(stays.changed) {
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
