// Package bench measures meshcert on the local test cluster, each measure
// next to a baseline measured in the same run: admission (P1, P2), issuance
// (P3), memory (P4), API writes at rest (P5), a renewal storm (P6), and the
// node agent: issuance through 10 agents (P7), a first certificate (P8),
// renewals pushed on open streams (P9) and an agent's cost (P10). The
// machine may be shared and noisy, so the ratios count; docs/performance.md
// describes each measure.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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

// measure runs a group of measures that share a setup.
type measure struct {
	ids []string
	run func(context.Context, Options, func(string, ...any)) ([]Row, error)
}

var measures = []measure{
	{[]string{"P1"}, admissionLatency},
	{[]string{"P2"}, apiCreate},
	{[]string{"P3", "P4", "P5"}, secretIssuance},
	{[]string{"P6"}, renewalStorm},
	{[]string{"P7", "P9"}, agentFleet},
	{[]string{"P8", "P10"}, agentIdentities},
	{[]string{"P10"}, idleAgent},
}

func (o Options) wants(m measure) bool {
	return len(o.Only) == 0 || slices.ContainsFunc(m.ids, func(id string) bool { return slices.Contains(o.Only, id) })
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
		if !o.wants(m) {
			continue
		}
		r, err := m.run(ctx, o, progress)
		if err != nil {
			return err
		}
		rows = append(rows, r...)
	}
	mode := "Full"
	if o.Quick {
		mode = "Quick"
	}
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
	slices.SortStableFunc(rows, func(a, b Row) int { return idNumber(a.ID) - idNumber(b.ID) })
	var b strings.Builder
	fmt.Fprintf(&b, "# meshcert benchmarks\n\n%s Every baseline is measured in the same run; the method is in [docs/performance.md](../docs/performance.md).\n\n", header)
	b.WriteString("| measure | meshcert | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n")
	var notes []string
	for _, r := range rows {
		verdict := "—"
		if r.Met != nil {
			verdict = map[bool]string{true: "yes", false: "**no**"}[*r.Met]
		}
		fmt.Fprintf(&b, "| %s %s | %s | %s | %s | %s | %s |\n", r.ID, r.Measure, orDash(r.Ours), orDash(r.Baseline), orDash(r.Ratio), orDash(r.Target), verdict)
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("- %s: %s\n", r.ID, r.Note))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n" + strings.Join(notes, ""))
	}
	return b.String()
}

// idNumber is the number of an id such as P10, for ordering.
func idNumber(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "P"))
	return n
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
