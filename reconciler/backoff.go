package reconciler

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Backoff spaces out retries after failed issuances: Initial, doubling up to Max.
type Backoff struct {
	Initial, Max time.Duration
}

type failure struct {
	count   int
	retryAt time.Time
	// cause is what the attempt was made with; when the plan or the issuer
	// changes, the backoff ends, since the fix may be in.
	cause string
}

// failures remembers each dataplane's recent failures.
type failures struct {
	policy Backoff
	mu     sync.Mutex
	byKey  map[types.NamespacedName]*failure
}

func newFailures(policy Backoff) *failures {
	return &failures{policy: policy, byKey: map[types.NamespacedName]*failure{}}
}

// record counts a failure and returns how long to wait before the next try.
func (f *failures) record(key types.NamespacedName, cause string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.byKey[key]
	if fl == nil || fl.cause != cause {
		fl = &failure{cause: cause}
		f.byKey[key] = fl
	}
	fl.count++
	delay := f.policy.Initial
	for i := 1; i < fl.count && delay < f.policy.Max; i++ {
		delay *= 2
	}
	delay = min(delay, f.policy.Max)
	fl.retryAt = now.Add(delay)
	return delay
}

// wait returns how long the dataplane must still wait, or 0. A different
// cause clears the backoff.
func (f *failures) wait(key types.NamespacedName, cause string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.byKey[key]
	if fl == nil {
		return 0
	}
	if fl.cause != cause {
		delete(f.byKey, key)
		return 0
	}
	return max(fl.retryAt.Sub(now), 0)
}

// known tells whether the dataplane's last failure had this cause.
func (f *failures) known(key types.NamespacedName, cause string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.byKey[key]
	return fl != nil && fl.cause == cause
}

func (f *failures) forget(key types.NamespacedName) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byKey, key)
}
