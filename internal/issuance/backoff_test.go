package issuance

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestBackoff(t *testing.T) {
	b := NewBackoff(BackoffPolicy{Initial: time.Second, Max: 5 * time.Second})
	owner := DataplaneOwner(types.NamespacedName{Namespace: "ns", Name: "web"})
	var got []time.Duration
	for range 5 {
		got = append(got, b.Record(owner, "cause", now))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	if w := b.Wait(owner, "cause", now.Add(time.Second)); w != 4*time.Second {
		t.Errorf("wait = %s, want 4s", w)
	}
	if w := b.Wait(owner, "a fix", now); w != 0 {
		t.Errorf("a new cause still waits %s", w)
	}
	if d := b.Record(owner, "a fix", now); d != time.Second {
		t.Errorf("the backoff of a new cause starts at %s, want 1s", d)
	}
}

func TestSoonest(t *testing.T) {
	tests := map[string]struct{ a, b, want time.Duration }{
		"the smaller":       {a: 3 * time.Second, b: time.Second, want: time.Second},
		"a is none":         {a: 0, b: time.Second, want: time.Second},
		"b is none":         {a: time.Second, b: -time.Second, want: time.Second},
		"neither is a wait": {a: 0, b: 0, want: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Soonest(tc.a, tc.b); got != tc.want {
				t.Errorf("Soonest(%s, %s) = %s, want %s", tc.a, tc.b, got, tc.want)
			}
		})
	}
}
