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
	byOwner map[Owner]*pending
	// reserved are the owners admitted whose request is not made yet: they
	// hold a place, so that owners admitted at once cannot pass the cap.
	reserved map[Owner]bool
	max      int
	waiting  []Owner
	queued   map[Owner]bool
	// onTurn is told of each owner whose turn has come. It must not block.
	onTurn func(Owner)
}

// pending is one request in flight.
type pending struct {
	name    string
	key     crypto.Signer
	created time.Time
}

func newInFlight(maxInFlight int, onTurn func(Owner)) *inFlight {
	if onTurn == nil {
		onTurn = func(Owner) {}
	}
	return &inFlight{byOwner: map[Owner]*pending{}, reserved: map[Owner]bool{}, max: maxInFlight, queued: map[Owner]bool{}, onTurn: onTurn}
}

func (f *inFlight) get(owner Owner) *pending {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byOwner[owner]
}

// admit tells whether a new request may start, or puts owner in line. An
// owner admitted holds its place until it starts its request, or gives the
// place up with end.
func (f *inFlight) admit(owner Owner) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.max <= 0 {
		return true
	}
	if f.reserved[owner] || f.open() < f.max {
		f.reserved[owner] = true
		return true
	}
	if !f.queued[owner] {
		f.queued[owner] = true
		f.waiting = append(f.waiting, owner)
	}
	return false
}

func (f *inFlight) start(owner Owner, p *pending) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.reserved, owner)
	if _, ok := f.byOwner[owner]; !ok {
		inFlightGauge.Inc()
	}
	f.byOwner[owner] = p
}

// open counts the places taken, by requests and by owners admitted.
func (f *inFlight) open() int { return len(f.byOwner) + len(f.reserved) }

// end ends owner's request, or gives up the place it was admitted to, and
// gives as many waiting owners their turn as there are free places.
func (f *inFlight) end(owner Owner) {
	f.mu.Lock()
	_, started := f.byOwner[owner]
	if !started && !f.reserved[owner] {
		f.mu.Unlock()
		return
	}
	if started {
		inFlightGauge.Dec()
		delete(f.byOwner, owner)
	}
	delete(f.reserved, owner)
	var next []Owner
	for len(f.waiting) > 0 && len(next) < f.max-f.open() {
		next = append(next, f.waiting[0])
		delete(f.queued, f.waiting[0])
		f.waiting = f.waiting[1:]
	}
	f.mu.Unlock()
	for _, o := range next {
		f.onTurn(o)
	}
}
