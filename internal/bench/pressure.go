package bench

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// cpuPressureFile is the kernel's pressure stall information for CPU: how
// long some runnable task has waited for one, in all.
const cpuPressureFile = "/proc/pressure/cpu"

// pressureEvery is how often cpuPressure reads the file: often enough for
// round trips of tens of milliseconds.
const pressureEvery = 10 * time.Millisecond

// cpuPressure is the machine's CPU pressure over time, as P8 reads it to
// tell which round trips waited for a CPU.
type cpuPressure struct {
	mu      sync.Mutex
	samples []stallSample
}

// stallSample is the kernel's total stall time when it was read.
type stallSample struct {
	at      time.Time
	stalled time.Duration
}

// watchCPUPressure reads the CPU pressure until ctx ends; it fails at once
// when the kernel does not report it.
func watchCPUPressure(ctx context.Context) (*cpuPressure, error) {
	p := &cpuPressure{}
	if err := p.sample(); err != nil {
		return nil, err
	}
	go func() {
		t := time.NewTicker(pressureEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = p.sample()
			}
		}
	}()
	return p, nil
}

func (p *cpuPressure) sample() error {
	b, err := os.ReadFile(cpuPressureFile)
	if err != nil {
		return err
	}
	now := time.Now()
	stalled, ok := parseCPUPressure(string(b))
	if !ok {
		return fmt.Errorf("%s: no total of the \"some\" line", cpuPressureFile)
	}
	p.mu.Lock()
	p.samples = append(p.samples, stallSample{now, stalled})
	p.mu.Unlock()
	return nil
}

// parseCPUPressure reads the total of the "some" line of a pressure file,
//
//	some avg10=1.23 avg60=0.50 avg300=0.10 total=123456
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//
// which counts microseconds.
func parseCPUPressure(text string) (time.Duration, bool) {
	for _, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "some" {
			continue
		}
		for _, f := range fields[1:] {
			v, ok := strings.CutPrefix(f, "total=")
			if !ok {
				continue
			}
			us, err := strconv.ParseUint(v, 10, 64)
			if err != nil || us > math.MaxInt64/uint64(time.Microsecond) {
				return 0, false
			}
			return time.Duration(us) * time.Microsecond, true
		}
	}
	return 0, false
}

// during is the share of s in which some task waited for a CPU, from the
// samples around its start and end; not ok when s is not inside them.
func (p *cpuPressure) during(s span) (float64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start, ok1 := stalledAt(p.samples, s.start)
	end, ok2 := stalledAt(p.samples, s.end)
	if !ok1 || !ok2 || s.took() <= 0 {
		return 0, false
	}
	return min(1, float64(end-start)/float64(s.took())), true
}

// stalledAt is the total stall time at t, between the samples around it.
func stalledAt(samples []stallSample, t time.Time) (time.Duration, bool) {
	i, found := slices.BinarySearchFunc(samples, t, func(s stallSample, t time.Time) int { return s.at.Compare(t) })
	if found {
		return samples[i].stalled, true
	}
	if i == 0 || i == len(samples) {
		return 0, false
	}
	a, b := samples[i-1], samples[i]
	f := float64(t.Sub(a.at)) / float64(b.at.Sub(a.at))
	return a.stalled + time.Duration(f*float64(b.stalled-a.stalled)), true
}

// pressureNote says how much the round trips of each side waited for a
// CPU: at the median of all, of the slowest 5%, and for each of those
// slower than the side's p99.
func pressureNote(p *cpuPressure, err error, agent, bare []span, agentP99, bareP99 time.Duration) string {
	if err != nil {
		return "The machine's CPU pressure was not read: " + err.Error() + "."
	}
	side := func(trips []span, over time.Duration) string {
		trips = slices.Clone(trips)
		slices.SortFunc(trips, func(a, b span) int { return cmp.Compare(a.took(), b.took()) })
		var all, slowest, slow []float64
		for i, t := range trips {
			v, ok := p.during(t)
			if !ok {
				continue
			}
			all = append(all, v)
			if i >= len(trips)*95/100 {
				slowest = append(slowest, v)
			}
			if t.took() > over {
				slow = append(slow, v)
			}
		}
		if len(all) == 0 {
			return "not sampled"
		}
		text := fmt.Sprintf("%.0f%% at the median, %.0f%% at the median of the slowest 5%%", 100*median(all), 100*median(slowest))
		if len(slow) > 0 {
			text += ", " + percents(slow) + " for those slower than its p99"
		}
		return text
	}
	return fmt.Sprintf("The machine's CPU pressure (%s, \"some\": the share of the time in which some runnable task waited for a CPU, read every %s) during the agent's round trips: %s; during the bare ones: %s.",
		cpuPressureFile, pressureEvery, side(agent, agentP99), side(bare, bareP99))
}

// percents lists shares as percentages.
func percents(shares []float64) string {
	parts := make([]string, len(shares))
	for i, v := range shares {
		parts[i] = fmt.Sprintf("%.0f%%", 100*v)
	}
	return strings.Join(parts, ", ")
}
