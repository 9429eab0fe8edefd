package agent

import "sync"

// Notifier wakes the connections of one identity when its certificate
// changes, and every connection when what all of them are served from, the
// trust bundles, changes: an issuance on a node of many workloads wakes
// only the streams of that workload.
type Notifier struct {
	mu sync.Mutex
	// waiting holds a channel per identity someone waits on, closed and
	// removed at the identity's next change.
	waiting map[string]chan struct{}
}

// NewNotifier returns a Notifier.
func NewNotifier() *Notifier { return &Notifier{waiting: map[string]chan struct{}{}} }

// C is closed at the next change of the identity's answer.
func (n *Notifier) C(spiffeID string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.waiting[spiffeID]
	if !ok {
		ch = make(chan struct{})
		n.waiting[spiffeID] = ch
	}
	return ch
}

// Notify wakes the waiters of one identity.
func (n *Notifier) Notify(spiffeID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch, ok := n.waiting[spiffeID]; ok {
		close(ch)
		delete(n.waiting, spiffeID)
	}
}

// NotifyAll wakes every waiter.
func (n *Notifier) NotifyAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ch := range n.waiting {
		close(ch)
	}
	clear(n.waiting)
}
