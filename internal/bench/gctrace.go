package bench

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// span is a stretch of wall-clock time.
type span struct{ start, end time.Time }

func (s span) overlaps(o span) bool { return s.start.Before(o.end) && o.start.Before(s.end) }

func (s span) took() time.Duration { return s.end.Sub(s.start) }

// overlapsAny tells whether s overlaps any of spans.
func (s span) overlapsAny(spans []span) bool {
	return slices.ContainsFunc(spans, s.overlaps)
}

// gcTrace is kube-apiserver's standard error as P8 reads it: the mark
// phases of its garbage collector, timed as the trace's lines arrive. Go
// prints a cycle's line as its mark termination ends, with the wall-clock
// length of its three phases (runtime/mgc.go, gcMarkTermination), so each
// mark phase is the stretch of that length before the line.
type gcTrace struct {
	mu      sync.Mutex
	partial []byte
	marks   []span
}

// maxTraceLine bounds a line held while it is incomplete; a longer one is
// log, not trace, and is dropped.
const maxTraceLine = 64 << 10

func (g *gcTrace) Write(p []byte) (int, error) {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.partial = append(g.partial, p...)
	for {
		i := bytes.IndexByte(g.partial, '\n')
		if i < 0 {
			break
		}
		if d, ok := parseGCTraceLine(g.partial[:i]); ok {
			g.marks = append(g.marks, span{now.Add(-d), now})
		}
		g.partial = g.partial[i+1:]
	}
	if len(g.partial) > maxTraceLine {
		g.partial = nil
	}
	return len(p), nil
}

// marksIn are the mark phases that overlap w.
func (g *gcTrace) marksIn(w span) []span {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []span
	for _, m := range g.marks {
		if m.overlaps(w) {
			out = append(out, m)
		}
	}
	return out
}

// maxGCPhase bounds a phase's length read from a trace line: beyond it the
// line is not one the runtime wrote.
const maxGCPhase = time.Hour

// parseGCTraceLine reads a line of GODEBUG=gctrace=1, such as
//
//	gc 12 @3.456s 2%: 0.031+12+0.015 ms clock, 0.062+0.5/5.2/10+0.030 ms cpu, 100->110->55 MB, 110 MB goal, 0 MB stacks, 0 MB globals, 2 P
//
// and returns the wall-clock length of its cycle: the stop that ends
// sweeping, the concurrent mark and the mark termination. Any other line is
// not ok.
func parseGCTraceLine(line []byte) (time.Duration, bool) {
	s := string(line)
	if !strings.HasPrefix(s, "gc ") {
		return 0, false
	}
	_, rest, ok := strings.Cut(s, ": ")
	if !ok {
		return 0, false
	}
	clock, _, ok := strings.Cut(rest, " ms clock")
	if !ok {
		return 0, false
	}
	phases := strings.Split(clock, "+")
	if len(phases) != 3 {
		return 0, false
	}
	var total time.Duration
	for _, p := range phases {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || math.IsNaN(v) || v < 0 || v > float64(maxGCPhase/time.Millisecond) {
			return 0, false
		}
		total += time.Duration(v * float64(time.Millisecond))
	}
	return total, true
}

// sortedTimes are the lengths of the round trips that overlap none of
// excluded, in order.
func sortedTimes(trips, excluded []span) []time.Duration {
	out := make([]time.Duration, 0, len(trips))
	for _, t := range trips {
		if !t.overlapsAny(excluded) {
			out = append(out, t.took())
		}
	}
	slices.Sort(out)
	return out
}

// gcNote says how often kube-apiserver's collector marked over P8's turns,
// in whose turns its marks began, and how many round trips of each side it
// overlapped: of all, and of those slower than the side's p99. Each side's
// round trips are in the order of its rounds turns.
func gcNote(marks []span, turns span, rounds int, agent, bare []span, agentP99, bareP99 time.Duration) string {
	if len(marks) == 0 {
		return fmt.Sprintf("kube-apiserver's garbage collector (GODEBUG=gctrace=1) completed no cycle over P8's turns (%s).", turns.took().Round(time.Second))
	}
	lengths := make([]time.Duration, len(marks))
	var marking time.Duration
	for i, m := range marks {
		lengths[i] = m.took()
		marking += m.took()
	}
	slices.Sort(lengths)
	overlapped := func(trips []span, over time.Duration) (all, slow, slowest int) {
		for _, t := range trips {
			hit := t.overlapsAny(marks)
			if hit {
				all++
			}
			if t.took() > over {
				slowest++
				if hit {
					slow++
				}
			}
		}
		return all, slow, slowest
	}
	aAll, aSlow, aSlowest := overlapped(agent, agentP99)
	bAll, bSlow, bSlowest := overlapped(bare, bareP99)
	began := func(trips []span) (marksBegun int, of time.Duration) {
		for _, turn := range turnsOf(trips, rounds) {
			of += turn.took()
			for _, m := range marks {
				if !m.start.Before(turn.start) && m.start.Before(turn.end) {
					marksBegun++
				}
			}
		}
		return marksBegun, of
	}
	aBegun, aTurns := began(agent)
	bBegun, bTurns := began(bare)
	return fmt.Sprintf("kube-apiserver's garbage collector (GODEBUG=gctrace=1, each mark phase timed by the trace's wall-clock figures) completed %d cycles over P8's turns (%s), one every %.1f s, marking %.0f%% of the time, %s at the median (%s–%s). %d marks began in the agent's turns (%s in all) and %d in the bare ones' (%s). A mark overlapped %d of the agent's %d round trips and %d of the %d bare ones; of those slower than each side's p99, %d of %d and %d of %d.",
		len(marks), turns.took().Round(time.Second), turns.took().Seconds()/float64(len(marks)), 100*marking.Seconds()/turns.took().Seconds(),
		ms(percentile(lengths, 0.5)), ms(lengths[0]), ms(lengths[len(lengths)-1]),
		aBegun, aTurns.Round(100*time.Millisecond), bBegun, bTurns.Round(100*time.Millisecond),
		aAll, len(agent), bAll, len(bare), aSlow, aSlowest, bSlow, bSlowest)
}

// turnsOf are the stretches of a side's rounds turns, from the first start
// to the last end of the round trips of each, which are in the order of
// their turns.
func turnsOf(trips []span, rounds int) []span {
	var out []span
	for r := range rounds {
		turn := trips[r*len(trips)/rounds : (r+1)*len(trips)/rounds]
		if len(turn) == 0 {
			continue
		}
		s := turn[0]
		for _, t := range turn[1:] {
			if t.start.Before(s.start) {
				s.start = t.start
			}
			if t.end.After(s.end) {
				s.end = t.end
			}
		}
		out = append(out, s)
	}
	return out
}
