package reconciler

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestPendingRequestsCap(t *testing.T) {
	dp := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "app", Name: name} }
	type step struct {
		admit, start, end string
		// admitted is what admit answers; woken, what the step wakes.
		admitted bool
		woken    []string
	}
	tests := map[string]struct {
		max   int
		steps []step
	}{
		"no cap admits all": {
			max: 0,
			steps: []step{
				{start: "a"}, {start: "b"}, {admit: "c", admitted: true}, {end: "a"},
			},
		},
		"at the cap, dataplanes wait in line and each end wakes the first": {
			max: 2,
			steps: []step{
				{start: "a"}, {admit: "b", admitted: true}, {start: "b"},
				{admit: "c"}, {admit: "d"}, {admit: "c"}, // c waits once, not twice
				{end: "a", woken: []string{"c"}},
				{start: "c"},
				{end: "x"}, // no request of x: nothing freed, nobody woken
				{end: "b", woken: []string{"d"}},
				{start: "d"},
				{end: "c"}, {end: "d"},
			},
		},
		"an end wakes as many as there are free places": {
			max: 2,
			steps: []step{
				{start: "a"}, {start: "b"}, {admit: "c"}, {admit: "d"}, {admit: "e"},
				{end: "a", woken: []string{"c"}},
				// c needed no request after all: b's end frees two places.
				{end: "b", woken: []string{"d", "e"}},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := newPendingRequests(tc.max)
			for i, s := range tc.steps {
				switch {
				case s.admit != "":
					if got := p.admit(dp(s.admit)); got != s.admitted {
						t.Fatalf("step %d: admit(%s) = %v, want %v", i, s.admit, got, s.admitted)
					}
				case s.start != "":
					p.set(dp(s.start), &pendingRequest{name: s.start})
				case s.end != "":
					p.delete(dp(s.end))
				}
				var woken []string
				for len(p.wake) > 0 {
					woken = append(woken, (<-p.wake).Object.GetName())
				}
				if !slices.Equal(woken, s.woken) {
					t.Fatalf("step %d: woken %v, want %v", i, woken, s.woken)
				}
			}
		})
	}
}
