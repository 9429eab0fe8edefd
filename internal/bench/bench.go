// Package bench measures meshcert on the local test cluster, each measure
// next to a baseline measured in the same run: admission (P1, P2), issuance
// (P3), memory (P4), API writes at rest (P5), a renewal storm (P6), and the
// node agent: issuance through 10 agents (P7) and a first certificate (P8),
// each before and after per-node approval, renewals pushed on open streams
// (P9) and an agent's cost (P10). The
// machine may be shared and noisy, so the ratios count; docs/performance.md
// describes each measure.
package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configures a run.
type Options struct {
	// Quick runs every measure at a small size, in a few minutes.
	Quick bool
	// Out receives progress and the table.
	Out io.Writer
	// Results is where the Markdown table is written, if set.
	Results string
	// Only, if set, runs just the measures that report these ids.
	Only []string
}

type progressFunc func(format string, args ...any)

// measure runs a group of measures that share a setup.
type measure struct {
	ids []string
	// root: each workload connects to the agent as a Unix user of its own.
	root bool
	run  func(context.Context, Options, progressFunc) ([]Row, error)
}

var measures = []measure{
	{[]string{"P1"}, false, admissionLatency},
	{[]string{"P2"}, false, apiCreate},
	{[]string{"P3", "P4", "P5"}, false, secretIssuance},
	{[]string{"P6"}, false, renewalStorm},
	{[]string{"P7", "P9"}, true, agentFleet},
	{[]string{"P8", "P10"}, true, agentIdentities},
	{[]string{"P10"}, true, idleAgent},
}

// Row is one line of the results table.
type Row struct {
	ID, Measure, Ours, Baseline, Ratio, Target string
	// Met is whether the target is met; nil when the row has none.
	Met *bool
	// Note, if set, is one line under the table.
	Note string
}

func met(ok bool) *bool { return &ok }

// Run runs the measures and writes the table.
func Run(ctx context.Context, o Options) error {
	start := time.Now()
	progress := func(format string, args ...any) {
		fmt.Fprintf(o.Out, "[%s] %s\n", time.Since(start).Round(time.Second), fmt.Sprintf(format, args...))
	}
	var rows []Row
	for _, m := range measures {
		if len(o.Only) > 0 && !slices.ContainsFunc(m.ids, func(id string) bool { return slices.Contains(o.Only, id) }) {
			continue
		}
		if m.root && os.Geteuid() != 0 {
			rows = append(rows, Row{ID: m.ids[0], Measure: "through the agent", Ours: "not run: each workload connects as a Unix user of its own, which needs root"})
			continue
		}
		r, err := m.run(ctx, o, progress)
		if err != nil {
			return err
		}
		rows = append(rows, r...)
	}
	mode := map[bool]string{false: "Full", true: "Quick"}[o.Quick]
	header := fmt.Sprintf("%s run of `make bench`, %s (%s), on %s.", mode, start.UTC().Format("2006-01-02 15:04 MST"), time.Since(start).Round(time.Second), machine())
	report := Report(header, rows)
	fmt.Fprint(o.Out, "\n"+report)
	if o.Results == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(o.Results), 0o755); err != nil {
		return err
	}
	return os.WriteFile(o.Results, []byte(report), 0o644)
}

// Report renders the rows, in the order of their ids, as bench/results.md:
// a header line, one table, and at most a line of note per row.
func Report(header string, rows []Row) string {
	rows = slices.Clone(rows)
	idNumber := func(r Row) int { n, _ := strconv.Atoi(strings.TrimPrefix(r.ID, "P")); return n }
	slices.SortStableFunc(rows, func(a, b Row) int { return idNumber(a) - idNumber(b) })
	var b, notes strings.Builder
	fmt.Fprintf(&b, "# meshcert benchmarks\n\n%s Every baseline is measured in the same run; the method is in [docs/performance.md](../docs/performance.md).\n\n", header)
	b.WriteString("| measure | meshcert | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		verdict := "—"
		if r.Met != nil {
			verdict = map[bool]string{true: "yes", false: "**no**"}[*r.Met]
		}
		cells := []string{r.ID + " " + r.Measure, r.Ours, r.Baseline, r.Ratio, r.Target, verdict}
		for i, c := range cells {
			cells[i] = cmp.Or(c, "—")
		}
		fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
		if r.Note != "" {
			fmt.Fprintf(&notes, "- %s: %s\n", r.ID, r.Note)
		}
	}
	if notes.Len() > 0 {
		b.WriteString("\n" + notes.String())
	}
	return b.String()
}

// machine describes where the run happened: CPU, cores, Go.
func machine() string {
	cpu := "unknown CPU"
	info, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(info)) {
		if name, ok := strings.CutPrefix(line, "model name"); ok {
			cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
			break
		}
	}
	return fmt.Sprintf("%s, %d cores, %s %s/%s", cpu, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// percentile is the p-th (0 to 1) of sorted values, or zero for none.
func percentile[T cmp.Ordered](sorted []T, p float64) T {
	if len(sorted) == 0 {
		var zero T
		return zero
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// median is the middle of values, in any order.
func median[T cmp.Ordered](values []T) T {
	return percentile(slices.Sorted(slices.Values(values)), 0.5)
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(max(1, len(d)))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
func mib(b uint64) string       { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
func times(r float64) string    { return fmt.Sprintf("%.2f×", r) }

// kib is bytes b per n things, in KiB.
func kib(b, n float64) string        { return fmt.Sprintf("%.1f KiB", b/n/1024) }
func rounded(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }

// rate is a time to do n things, with their rate.
func rate(took time.Duration, n int) string {
	return fmt.Sprintf("%s (%.0f/s)", rounded(took), float64(n)/took.Seconds())
}

// parallel runs fn for 0..n-1 on 32 workers, as a busy client would, and
// returns the first error.
func parallel(n int, fn func(i int) error) error {
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range next {
				errs[i] = fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return firstError(errs)
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
