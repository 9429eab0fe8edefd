package meshidentity

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRetiringRoots(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		annotation string
		want       map[string]time.Time
	}{
		"none":          {want: map[string]time.Time{}},
		"two, in order": {annotation: "aa=2026-06-01T12:00:00Z,bb=2026-06-01T12:00:30Z", want: map[string]time.Time{"aa": at, "bb": at.Add(30 * time.Second)}},
		// A root whose time does not parse is retired from now on.
		"a broken entry is dropped": {annotation: "aa=yesterday,bb=2026-06-01T12:00:00Z,cc", want: map[string]time.Time{"bb": at}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := parseRetiring(tc.annotation)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseRetiring (-want +got):\n%s", diff)
			}
			if again := parseRetiring(formatRetiring(got)); !cmp.Equal(got, again) {
				t.Errorf("formatRetiring does not round-trip: %v, then %v", got, again)
			}
		})
	}
}
