package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// idleAgent is the rest of P10, what an agent costs once its workloads are
// served: its memory with N identities on N open streams, its API writes
// while idle, and kube-apiserver's CPU with 100 idle agents against an idle
// cluster without them.
func idleAgent(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	n, window, idleAgents, cpuWindow := 1000, 10*time.Minute, 100, 2*time.Minute
	if o.Quick {
		n, window, idleAgents, cpuWindow = 300, time.Minute, 20, 30*time.Second
	}
	if os.Geteuid() != 0 {
		return []Row{{ID: "P10", Measure: "an idle agent", Ours: "not run: each workload connects as a Unix user of its own, which needs root"}}, nil
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	run, err := startAgentRun(ctx, n, 1, "", "--metrics-bind-address", metrics)
	if err != nil {
		return nil, err
	}
	defer run.stop()
	pid := run.agents[0].Pid()
	idle, err := residentBytes(pid)
	if err != nil {
		return nil, err
	}

	progress("P10: %d workloads on open streams to one agent", n)
	workloads, stop := run.runWorkloads(ctx, n)
	defer stop()
	if err := waitHolding(workloads, 10*time.Minute); err != nil {
		return nil, fmt.Errorf("P10: %w", err)
	}
	time.Sleep(2 * time.Second) // the last requests deleted
	serving, err := residentBytes(pid)
	if err != nil {
		return nil, err
	}

	progress("P10: the agent idle for %s", window)
	before, err := scrape(metrics, "rest_client_requests_total")
	if err != nil {
		return nil, err
	}
	time.Sleep(window)
	after, err := scrape(metrics, "rest_client_requests_total")
	if err != nil {
		return nil, err
	}
	writes, calls := writesOf(after)-writesOf(before), total(after)-total(before)
	stop()
	run.stop()

	progress("P10: kube-apiserver's CPU, idle, then with %d idle agents", idleAgents)
	alone, withAgents, err := idleAgentsCPU(ctx, idleAgents, cpuWindow)
	if err != nil {
		return nil, err
	}
	cpuRatio := withAgents / alone
	return []Row{
		{ID: "P10", Measure: fmt.Sprintf("agent's resident memory with %d identities on open SDS streams, vs idle", n), Ours: mib(serving),
			Baseline: mib(idle), Ratio: fmt.Sprintf("%.1f KiB per identity and stream", (float64(serving)-float64(idle))/float64(n)/1024)},
		{ID: "P10", Measure: fmt.Sprintf("the agent's API writes in %s idle, %d open streams", window, n),
			Ours: fmt.Sprintf("%.0f (of %.0f requests)", writes, calls), Target: "0", Met: met(writes == 0)},
		{ID: "P10", Measure: fmt.Sprintf("kube-apiserver's CPU with %d idle agents (kubernetes attestor), vs none", idleAgents),
			Ours: fmt.Sprintf("%.2f CPU s/s", withAgents), Baseline: fmt.Sprintf("%.2f CPU s/s", alone), Ratio: fmt.Sprintf("%.1f×", cpuRatio),
			Target: "≤ 2×", Met: met(cpuRatio <= 2)},
	}, nil
}

// idleAgentsCPU is kube-apiserver's CPU per second over window in an idle
// cluster, then again once agents idle agents run, each for a node of its
// own with no pods.
func idleAgentsCPU(ctx context.Context, agents int, window time.Duration) (alone, withAgents float64, err error) {
	e, err := newEnv(ctx, localcluster.Options{}, signerControllers...)
	if err != nil {
		return 0, 0, err
	}
	defer e.stop()
	apiserver, err := pidUsing("kube-apiserver", e.c.Dir())
	if err != nil {
		return 0, 0, err
	}
	cpuPerSecond := func() (float64, error) {
		time.Sleep(10 * time.Second) // settle
		before, err := cpuSeconds(apiserver)
		if err != nil {
			return 0, err
		}
		time.Sleep(window)
		after, err := cpuSeconds(apiserver)
		return (after - before) / window.Seconds(), err
	}
	if alone, err = cpuPerSecond(); err != nil {
		return 0, 0, err
	}
	dir, err := os.MkdirTemp("", "bench-idle")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	procs := make([]*localcluster.Process, agents)
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.Kill()
			}
		}
	}()
	if err := parallel(agents, func(k int) error {
		var err error
		procs[k], err = e.c.StartAgentProcess(filepath.Join(dir, fmt.Sprintf("agent-%d.log", k)), "",
			"--system-namespace", systemNamespace, "--node-name", fmt.Sprintf("idle-%d", k), "--socket", filepath.Join(dir, fmt.Sprintf("agent-%d.sock", k)))
		return err
	}); err != nil {
		return 0, 0, err
	}
	withAgents, err = cpuPerSecond()
	return alone, withAgents, err
}
