package issuance

import (
	"crypto"
	"sync"
	"time"
)

// inFlight holds the requests open at once, with the key of each. It lives
// only in memory: a key never touches the API server. With a cap, the owners
// turned away wait in line, and each request that ends gives the first of
// them its turn. A large mesh then finishes requests before it starts more,
// rather than holding thousands of keys and requests while the signer catches
// up.
type inFlight struct {
	mu      sync.Mutex
	byOwner map[string]*pending
	max     int
	waiting []string
	queued  map[string]bool
	// onTurn is told of each owner whose turn has come. It must not block.
	onTurn func(owner string)
}

// pending is one request in flight.
type pending struct {
	name    string
	key     crypto.Signer
	created time.Time
}

func newInFlight(maxInFlight int, onTurn func(owner string)) *inFlight {
	if onTurn == nil {
		onTurn = func(string) {}
	}
	return &inFlight{byOwner: map[string]*pending{}, max: maxInFlight, queued: map[string]bool{}, onTurn: onTurn}
}

func (f *inFlight) get(owner string) *pending {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byOwner[owner]
}

// admit tells whether a new request may start, or puts owner in line. The
// cap is soft: callers admitted at the same moment may pass it by a few.
func (f *inFlight) admit(owner string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.max <= 0 || len(f.byOwner) < f.max {
		return true
	}
	if !f.queued[owner] {
		f.queued[owner] = true
		f.waiting = append(f.waiting, owner)
	}
	return false
}

func (f *inFlight) start(owner string, p *pending) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.byOwner[owner]; !ok {
		inFlightGauge.Inc()
	}
	f.byOwner[owner] = p
}

// end ends owner's request, and gives as many waiting owners their turn as
// there are free places.
func (f *inFlight) end(owner string) {
	f.mu.Lock()
	if _, ok := f.byOwner[owner]; !ok {
		f.mu.Unlock()
		return
	}
	inFlightGauge.Dec()
	delete(f.byOwner, owner)
	var next []string
	for len(f.waiting) > 0 && len(next) < f.max-len(f.byOwner) {
		next = append(next, f.waiting[0])
		delete(f.queued, f.waiting[0])
		f.waiting = f.waiting[1:]
	}
	f.mu.Unlock()
	for _, o := range next {
		f.onTurn(o)
	}
}
