package agent

import "testing"

func TestNotifier(t *testing.T) {
	const web, db = "spiffe://example.com/web", "spiffe://example.com/db"
	tests := map[string]struct {
		notify func(*Notifier)
		woken  map[string]bool
	}{
		"a change of one identity wakes its waiters only": {
			notify: func(n *Notifier) { n.Notify(web) },
			woken:  map[string]bool{web: true, db: false},
		},
		"a change of the bundles wakes everyone": {
			notify: func(n *Notifier) { n.NotifyAll() },
			woken:  map[string]bool{web: true, db: true},
		},
		"a change of an identity nobody waits on wakes nobody": {
			notify: func(n *Notifier) { n.Notify("spiffe://example.com/other") },
			woken:  map[string]bool{web: false, db: false},
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			n := NewNotifier()
			waits := map[string][]<-chan struct{}{}
			for id := range test.woken {
				waits[id] = []<-chan struct{}{n.C(id), n.C(id)} // Two streams of one identity.
			}
			test.notify(n)
			for id, chans := range waits {
				for _, c := range chans {
					select {
					case <-c:
						if !test.woken[id] {
							t.Errorf("a waiter of %s was woken", id)
						}
					default:
						if test.woken[id] {
							t.Errorf("a waiter of %s was not woken", id)
						}
					}
				}
			}
			// A wait begun after the change waits for the next one.
			for id := range test.woken {
				select {
				case <-n.C(id):
					t.Errorf("a wait of %s begun after the change was woken by it", id)
				default:
				}
			}
		})
	}
}
