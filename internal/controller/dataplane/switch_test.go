package dataplane

import (
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestSwitchSpreadsAndReports(t *testing.T) {
	s := newSwitches(time.Minute)
	if !s.begin("demo", "ca-2", now, 20) || s.begin("demo", "ca-2", now, 20) {
		t.Fatal("begin must report only the first call")
	}
	var waits []time.Duration
	for i := range 20 {
		waits = append(waits, s.wait("demo", types.NamespacedName{Namespace: "ns", Name: "dp-" + string(rune('a'+i))}, now))
	}
	if slices.Min(waits) < 0 || slices.Max(waits) > time.Minute || slices.Max(waits)-slices.Min(waits) < 30*time.Second {
		t.Errorf("waits %v are not spread over the minute", waits)
	}
	reports := 0
	for i := range 20 {
		_, _, report, complete := s.progress("demo", "ca-2")
		if report {
			reports++
		}
		if complete != (i == 19) {
			t.Fatalf("complete at %d", i+1)
		}
	}
	if reports != 9 {
		t.Errorf("%d progress reports for 20 dataplanes, want one per tenth (9, then complete)", reports)
	}
	if s.wait("demo", types.NamespacedName{Name: "x"}, now) != 0 {
		t.Error("a finished switch still delays")
	}
}
