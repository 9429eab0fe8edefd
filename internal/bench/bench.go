// Package bench measures meshcert against baselines measured in the same
// run, on the test cluster: admission (P1, P2), issuance (P3), memory (P4),
// API writes at rest (P5), a renewal storm (P6), and the node agent:
// issuance through 10 agents (P7), renewals pushed on open streams (P9), a
// first certificate (P8) and an agent's memory (P10). The machine is shared and
// noisy, so the ratios count; absolute figures are context.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Options configures a run.
type Options struct {
	// Quick runs every measure at a small size, in a few minutes.
	Quick bool
	// Out receives progress and the table.
	Out io.Writer
	// Results is where the Markdown report is written, if set.
	Results string
	// ProfileDir, if set, receives CPU profiles of kube-apiserver during
	// issuance (P3).
	ProfileDir string
	// Only, if set, runs just the measures that report these ids.
	Only []string
}

// measure runs a group of measures that share a setup.
type measure struct {
	ids []string
	run func(context.Context, Options, func(string, ...any)) ([]Row, error)
}

var measures = []measure{
	{[]string{"P1"}, admissionRate},
	{[]string{"P2"}, apiCreate},
	{[]string{"P3", "P4", "P5"}, secretIssuance},
	{[]string{"P6"}, renewalStorm},
	{[]string{"P7", "P9"}, agentFleet},
	{[]string{"P8", "P10"}, agentIdentities},
	{[]string{"P10"}, agentsAtRest},
}

func (o Options) wants(m measure) bool {
	if len(o.Only) == 0 {
		return true
	}
	for _, id := range m.ids {
		if slices.Contains(o.Only, id) {
			return true
		}
	}
	return false
}

// Row is one line of the results table.
type Row struct {
	ID, Measure, Ours, Baseline, Ratio, Target string
	Met                                        *bool
	// Note, if set, is printed under the table: what bounds the figure.
	Note string
}

func met(ok bool) *bool { return &ok }

// Run runs every measure and reports them.
func Run(ctx context.Context, o Options) error {
	start := time.Now()
	var rows []Row
	progress := func(format string, args ...any) {
		fmt.Fprintf(o.Out, "[%s] %s\n", time.Since(start).Round(time.Second), fmt.Sprintf(format, args...))
	}
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
	report := Report(rows, o.Quick, time.Since(start))
	fmt.Fprint(o.Out, "\n"+report)
	if o.Results != "" {
		if err := os.MkdirAll(filepath.Dir(o.Results), 0o755); err != nil {
			return err
		}
		return os.WriteFile(o.Results, []byte(report), 0o644)
	}
	return nil
}

// Report renders the rows as Markdown, with the machine they ran on.
func Report(rows []Row, quick bool, took time.Duration) string {
	var b strings.Builder
	mode := "full"
	if quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "# meshcert benchmarks\n\n%s run of `make bench`, %s, on %s.\n\n", mode, time.Now().UTC().Format("2006-01-02 15:04 MST"), machine())
	b.WriteString("Every figure stands next to a baseline measured in the same run; the machine is shared and noisy, so the ratios are what count.\n\n")
	b.WriteString("| id | measure | meshcert | baseline | ratio | target | met |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		verdict := "—"
		if r.Met != nil {
			verdict = map[bool]string{true: "yes", false: "**no**"}[*r.Met]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.ID, r.Measure, r.Ours, orDash(r.Baseline), orDash(r.Ratio), orDash(r.Target), verdict)
	}
	var notes []string
	for _, r := range rows {
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("- %s: %s\n", r.ID, r.Note))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n" + strings.Join(notes, ""))
	}
	fmt.Fprintf(&b, "\nThe run took %s.\n", took.Round(time.Second))
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
