package agent

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// TestWakeOverflow: identities woken while the reconciler is behind reach it
// once each as it catches up, and none leaves a goroutine blocked when the
// agent stops first.
func TestWakeOverflow(t *testing.T) {
	tests := map[string]struct {
		extra   int
		stopped bool
	}{
		"handed over as the reconciler catches up": {extra: 500},
		"nothing blocked after the agent stopped":  {extra: 500, stopped: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := NewSVIDs(SVIDOptions{})
			before := runtime.NumGoroutine()
			for i := range cap(s.wake) + tc.extra {
				s.enqueue(fmt.Sprintf("spiffe://td/w%d", i))
				s.enqueue(fmt.Sprintf("spiffe://td/w%d", i)) // woken twice, kept once
			}
			if got := runtime.NumGoroutine(); got > before {
				t.Errorf("%d goroutines after the wake-ups, %d before", got, before)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			if tc.stopped {
				cancel()
			}
			go func() { done <- s.drainOverflow(ctx) }()
			if tc.stopped {
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("drainOverflow did not end with its context")
				}
				return
			}
			seen := map[string]int{}
			deadline := time.After(10 * time.Second)
			for len(seen) < cap(s.wake)+tc.extra {
				select {
				case e := <-s.wake:
					seen[e.Object]++
				case <-deadline:
					t.Fatalf("%d identities reached the reconciler, want %d", len(seen), cap(s.wake)+tc.extra)
				}
			}
			for id, n := range seen {
				if n > 2 {
					t.Errorf("%s woke the reconciler %d times", id, n)
				}
			}
		})
	}
}
