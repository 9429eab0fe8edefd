package bench

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseGCTraceLine(t *testing.T) {
	tests := map[string]struct {
		line   string
		want   time.Duration
		wantOK bool
	}{
		"a cycle": {
			line:   "gc 12 @3.456s 2%: 0.031+12+0.015 ms clock, 0.062+0.5/5.2/10+0.030 ms cpu, 100->110->55 MB, 110 MB goal, 0 MB stacks, 0 MB globals, 2 P",
			want:   12046 * time.Microsecond,
			wantOK: true,
		},
		"a forced cycle": {
			line:   "gc 3 @0.101s 1%: 0.010+1.5+0.020 ms clock, 0.020+0/1.0/0+0.040 ms cpu, 4->4->0 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P (forced)",
			want:   1530 * time.Microsecond,
			wantOK: true,
		},
		"a cycle checking for goroutine leaks": {
			line:   "gc 7 @1.000s 3% (checking for goroutine leaks): 1+2+3 ms clock, 2+0/1/0+6 ms cpu, 8->9->4 MB, 9 MB goal, 0 MB stacks, 0 MB globals, 2 P",
			want:   6 * time.Millisecond,
			wantOK: true,
		},
		"a log line":           {line: `I1202 00:41:07.123456   12345 controller.go:615] quota admission added evaluator for: leases`},
		"two phases":           {line: "gc 1 @0.1s 0%: 0.1+0.2 ms clock, 0 ms cpu"},
		"a phase not a number": {line: "gc 1 @0.1s 0%: 0.1+x+0.2 ms clock, 0 ms cpu"},
		"a negative phase":     {line: "gc 1 @0.1s 0%: 0.1+-5+0.2 ms clock, 0 ms cpu"},
		"NaN":                  {line: "gc 1 @0.1s 0%: 0.1+NaN+0.2 ms clock, 0 ms cpu"},
		"beyond an hour":       {line: "gc 1 @0.1s 0%: 0.1+1e300+0.2 ms clock, 0 ms cpu"},
		"no clock":             {line: "gc 1 @0.1s 0%: 0.1+0.2+0.3 ms"},
		"empty":                {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := parseGCTraceLine([]byte(tc.line))
			if ok != tc.wantOK || got != tc.want {
				t.Errorf("parseGCTraceLine(%q) = %v, %v; want %v, %v", tc.line, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestGCTraceMarks(t *testing.T) {
	var g gcTrace
	before := time.Now()
	// A line split over writes, among log lines, and an unfinished one.
	for _, w := range []string{
		"I1202 00:41:07.123456 1 x.go:1] starting\ngc 1 @0.5s 1%: 0.1+40",
		"+0.2 ms clock, 0.2+0/1/0+0.4 ms cpu, 4->5->2 MB, 5 MB goal, 0 MB stacks, 0 MB globals, 2 P\n",
		"gc 2 @1.0s 1%: 0.1+",
	} {
		if n, err := g.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(w))
		}
	}
	after := time.Now()
	marks := g.marksIn(span{before.Add(-time.Second), after})
	if len(marks) != 1 {
		t.Fatalf("got %d marks, want 1: %v", len(marks), marks)
	}
	if got := marks[0].took(); got != 40300*time.Microsecond {
		t.Errorf("the mark lasted %v, want 40.3ms", got)
	}
	if marks[0].end.Before(before) || marks[0].end.After(after) {
		t.Errorf("the mark ended at %v, outside the writes (%v to %v)", marks[0].end, before, after)
	}
	if got := g.marksIn(span{after.Add(time.Second), after.Add(2 * time.Second)}); len(got) != 0 {
		t.Errorf("marks after the trace: %v", got)
	}
	if _, err := g.Write([]byte(strings.Repeat("x", maxTraceLine+1))); err != nil || len(g.partial) != 0 {
		t.Errorf("an overlong line is held (%d bytes, %v)", len(g.partial), err)
	}
}

func FuzzParseGCTraceLine(f *testing.F) {
	f.Add("gc 12 @3.456s 2%: 0.031+12+0.015 ms clock, 0.062+0.5/5.2/10+0.030 ms cpu, 100->110->55 MB, 110 MB goal, 0 MB stacks, 0 MB globals, 2 P")
	f.Add("gc 1 @0.1s 0%: 0x1p3+Inf+0 ms clock")
	f.Add("I1202 00:41:07.123456 1 x.go:1] gc 1: 1+2+3 ms clock")
	f.Fuzz(func(t *testing.T, line string) {
		d, ok := parseGCTraceLine([]byte(line))
		if !ok {
			if d != 0 {
				t.Errorf("not ok, yet %v", d)
			}
			return
		}
		if !strings.HasPrefix(line, "gc ") || d < 0 || d > 3*maxGCPhase {
			t.Errorf("parseGCTraceLine(%q) = %v, ok", line, d)
		}
	})
}

func TestGCNoteTurns(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Two rounds of two round trips each: the agent's turns at 0–100 and
	// 200–300 ms, the bare ones' at 100–200 and 300–400, as alternating turns.
	agent := []span{{at(0), at(60)}, {at(40), at(100)}, {at(200), at(250)}, {at(230), at(300)}}
	bare := []span{{at(100), at(150)}, {at(140), at(200)}, {at(300), at(330)}, {at(320), at(400)}}
	if got, want := fmt.Sprint(turnsOf(agent, 2)), fmt.Sprint([]span{{at(0), at(100)}, {at(200), at(300)}}); got != want {
		t.Errorf("turnsOf() = %s, want %s", got, want)
	}
	// Two marks begin in the agent's turns, one in the bare ones', and one
	// that began before the turns is in neither.
	marks := []span{{at(-50), at(10)}, {at(50), at(120)}, {at(250), at(260)}, {at(310), at(320)}}
	got := gcNote(marks, span{at(0), at(400)}, 2, agent, bare, 70*time.Millisecond, 70*time.Millisecond)
	if want := "2 marks began in the agent's turns (200ms in all) and 1 in the bare ones' (200ms)."; !strings.Contains(got, want) {
		t.Errorf("gcNote() = %q; want it to contain %q", got, want)
	}
	if want := "A mark overlapped 3 of the agent's 4 round trips and 2 of the 4 bare ones"; !strings.Contains(got, want) {
		t.Errorf("gcNote() = %q; want it to contain %q", got, want)
	}
}
