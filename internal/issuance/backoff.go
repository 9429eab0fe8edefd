package issuance

import (
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// BackoffPolicy spaces out retries after failed attempts: Initial, doubling
// up to Max.
type BackoffPolicy struct {
	Initial, Max time.Duration
}

// RateLimiter spaces out a controller's retries after errors, such as an
// API server out of reach, on the same policy. controller-runtime's default
// grows to 1000s, and would hold a renewal long after the API server is back.
func (p BackoffPolicy) RateLimiter() workqueue.TypedRateLimiter[reconcile.Request] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](p.Initial, p.Max)
}

// Backoff remembers each owner's recent failures. A failure is recorded with
// its cause, what the attempt was made with: when the cause changes (the
// identity, the issuer, or the issuer's resourceVersion), the backoff ends,
// since the fix may be in.
type Backoff struct {
	policy BackoffPolicy
	mu     sync.Mutex
	byKey  map[Owner]*failure
}

type failure struct {
	count   int
	retryAt time.Time
	cause   string
}

// NewBackoff returns an empty Backoff with the policy.
func NewBackoff(policy BackoffPolicy) *Backoff {
	return &Backoff{policy: policy, byKey: map[Owner]*failure{}}
}

// Record counts a failure and returns how long to wait before the next try.
func (b *Backoff) Record(owner Owner, cause string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.byKey[owner]
	if f == nil || f.cause != cause {
		f = &failure{cause: cause}
		b.byKey[owner] = f
	}
	f.count++
	delay := b.policy.Initial
	for i := 1; i < f.count && delay < b.policy.Max; i++ {
		delay *= 2
	}
	delay = min(delay, b.policy.Max)
	f.retryAt = now.Add(delay)
	return delay
}

// Wait returns how long the owner must still wait, or 0. A different cause
// clears the backoff.
func (b *Backoff) Wait(owner Owner, cause string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.byKey[owner]
	if f == nil {
		return 0
	}
	if f.cause != cause {
		delete(b.byKey, owner)
		return 0
	}
	return max(f.retryAt.Sub(now), 0)
}

// Known tells whether the owner's last failure had this cause.
func (b *Backoff) Known(owner Owner, cause string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.byKey[owner]
	return f != nil && f.cause == cause
}

// Forget ends the owner's backoff.
func (b *Backoff) Forget(owner Owner) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.byKey, owner)
}

// Soonest is the sooner of two waits, where a wait of 0 or less is none.
func Soonest(a, b time.Duration) time.Duration {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	}
	return min(a, b)
}
