package issuance

import (
	"slices"
	"testing"
)

func TestInFlightCap(t *testing.T) {
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
		"at the cap, owners wait in line and each end wakes the first": {
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
		"owners admitted at once hold their places until they start or give up": {
			max: 2,
			steps: []step{
				{admit: "a", admitted: true}, {admit: "b", admitted: true},
				{admit: "a", admitted: true}, // a's place is a's already
				{admit: "c"},
				{start: "a"}, {admit: "d"},
				{end: "b", woken: []string{"c"}}, // b made no request after all
				{admit: "c", admitted: true}, {start: "c"},
				{end: "a", woken: []string{"d"}},
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
			var woken []string
			f := newInFlight(tc.max, func(o Owner) { woken = append(woken, o.Name) })
			owner := func(name string) Owner { return ProbeOwner("mesh", name) }
			for i, s := range tc.steps {
				woken = nil
				switch {
				case s.admit != "":
					if got := f.admit(owner(s.admit)); got != s.admitted {
						t.Fatalf("step %d: admit(%s) = %v, want %v", i, s.admit, got, s.admitted)
					}
				case s.start != "":
					f.start(owner(s.start), &pending{name: s.start})
				case s.end != "":
					f.end(owner(s.end))
				}
				if !slices.Equal(woken, s.woken) {
					t.Fatalf("step %d: woken %v, want %v", i, woken, s.woken)
				}
			}
		})
	}
}
