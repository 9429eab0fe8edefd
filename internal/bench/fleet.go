package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/meshcert/meshcert/internal/sdsclient"
)

// fleetAgents is how many agents P7 spreads its workloads over, as on as
// many nodes.
const fleetAgents = 10

// renewalLifetime is the certificates' lifetime in P9.
const renewalLifetime = 2 * time.Minute

// agentFleet is P7, issuance through 10 agents, each a process with a socket
// of its own, to N Envoy-shaped SDS clients, each connecting as a Unix user
// of its own, against (a) cert-manager's CA signer alone on N bare requests;
// and, at the first size, P9: the renewals of those certificates pushed on
// the open streams.
func agentFleet(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	sizes := []int{1000, 10000}
	if o.Quick {
		sizes = []int{300}
	}
	if os.Geteuid() != 0 {
		return []Row{{ID: "P7", Measure: "issuance through agents", Ours: "not run: each workload connects as a Unix user of its own, which needs root"}}, nil
	}
	var rows []Row
	for i, n := range sizes {
		progress("P7: N=%d: (a) cert-manager's CA signer alone", n)
		a, err := signerAlone(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("P7 (a): %w", err)
		}
		duration := ""
		if i == 0 {
			duration = renewalLifetime.String()
		}
		run, err := startAgentRun(ctx, n, fleetAgents, duration)
		if err != nil {
			return nil, err
		}
		progress("P7: N=%d: %d workloads over %d agents", n, n, fleetAgents)
		took, renewals, err := run.fleet(ctx, n, i == 0, progress)
		run.stop()
		if err != nil {
			return nil, err
		}
		progress("P7: N=%d: %s, (a) %s", n, took.Round(100*time.Millisecond), a.Round(100*time.Millisecond))
		ratio := a.Seconds() / took.Seconds()
		rows = append(rows, Row{ID: "P7",
			Measure: fmt.Sprintf("%d workloads over %d agents to verified SVIDs, vs (a) the CA signer alone on bare requests", n, fleetAgents),
			Ours:    rate(took, n), Baseline: rate(a, n),
			Ratio: fmt.Sprintf("%.2f×", ratio), Target: "≥ 0.8×", Met: met(ratio >= 0.8)})
		if renewals != nil {
			rows = append(rows, *renewals)
		}
	}
	return rows, nil
}

// fleet starts n workloads, workload i on agent i mod the agents, and
// times them to their SVIDs; with renewals, it then keeps their streams
// open through a lifetime and measures the renewals pushed on them (P9).
func (r *agentRun) fleet(ctx context.Context, n int, renewals bool, progress func(string, ...any)) (time.Duration, *Row, error) {
	start := time.Now()
	workloads, stop := r.runWorkloads(ctx, n)
	defer stop()
	if err := waitHolding(workloads, 30*time.Minute); err != nil {
		return 0, nil, fmt.Errorf("P7: %w", err)
	}
	took := time.Since(start)
	if !renewals {
		return took, nil, nil
	}

	progress("P9: keeping %d streams open through their certificates' lifetime of %s", n, renewalLifetime)
	var lastExpiry time.Time
	for _, w := range workloads {
		lastExpiry = latest(lastExpiry, w.History()[0].Leaf.NotAfter)
	}
	unrenewed := func(w *sdsclient.Workload) bool { return len(w.History()) < 2 }
	for time.Now().Before(lastExpiry.Add(5*time.Second)) && slices.ContainsFunc(workloads, unrenewed) {
		time.Sleep(time.Second)
	}
	var pushedAt []float64 // in fractions of the lifetime
	var renewedAt []time.Time
	for _, w := range workloads {
		h := w.History()
		first := h[0].Leaf
		if len(h) < 2 || !h[1].Received.Before(first.NotAfter) {
			continue
		}
		pushedAt = append(pushedAt, float64(h[1].Received.Sub(first.NotBefore))/float64(first.NotAfter.Sub(first.NotBefore)))
		renewedAt = append(renewedAt, h[1].Received)
	}
	row := &Row{ID: "P9",
		Measure: fmt.Sprintf("renewals pushed on %d open streams, certificates of %s", n, renewalLifetime),
		Ours:    fmt.Sprintf("%d of %d before expiry; %s", len(pushedAt), n, spread(pushedAt, renewedAt)),
		Target:  "every one before expiry", Met: met(len(pushedAt) == n),
	}
	progress("P9: %s", row.Ours)
	return took, row, nil
}

// spread says when in their lifetime renewals came (p5–p95, as fractions
// of it) and the most in one second.
func spread(fractions []float64, at []time.Time) string {
	if len(fractions) == 0 {
		return "none"
	}
	fractions = slices.Sorted(slices.Values(fractions))
	return fmt.Sprintf("at %.0f%%–%.0f%% of the lifetime (p5–p95), at most %d/s",
		100*percentile(fractions, 0.05), 100*percentile(fractions, 0.95), peakPerSecond(at))
}

// peakPerSecond is the most times that fall in one second.
func peakPerSecond(times []time.Time) int {
	perSecond := map[int64]int{}
	peak := 0
	for _, t := range times {
		perSecond[t.Unix()]++
		peak = max(peak, perSecond[t.Unix()])
	}
	return peak
}

// runWorkloads runs n workloads, each an Envoy-shaped SDS client of a Unix
// user of its own, workload i on agent i mod the agents, until stopped.
func (r *agentRun) runWorkloads(ctx context.Context, n int) (workloads []*sdsclient.Workload, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	workloads = make([]*sdsclient.Workload, n)
	for i := range workloads {
		w := &sdsclient.Workload{Socket: r.sockets[i%len(r.sockets)], UID: uint32(firstUID + i), SpiffeID: spiffeID(i)}
		workloads[i] = w
		wg.Go(func() { w.Run(ctx) })
	}
	return workloads, func() { cancel(); wg.Wait() }
}

// waitHolding waits until every workload holds an SVID.
func waitHolding(workloads []*sdsclient.Workload, limit time.Duration) error {
	for deadline := time.Now().Add(limit); ; time.Sleep(20 * time.Millisecond) {
		held := 0
		for _, w := range workloads {
			if _, ok := w.Current(); ok {
				held++
			}
		}
		if held == len(workloads) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d workloads hold an SVID after %s", held, len(workloads), limit)
		}
	}
}
