package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/sdsclient"
)

// agentsAtRest measures the rest of P10, what an agent costs once its
// workloads are served: its memory with N identities on N open streams, its
// API requests at rest, and the API server's CPU with 100 idle agents next
// to an idle cluster.
func agentsAtRest(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	n, window, idleAgents, idleWindow := 1000, 10*time.Minute, 100, 2*time.Minute
	if o.Quick {
		n, window, idleAgents, idleWindow = 300, time.Minute, 20, 30*time.Second
	}
	if os.Geteuid() != 0 {
		return []Row{{ID: "P10", Measure: "an agent at rest", Ours: "not run: each workload connects as a Unix user of its own, which needs root"}}, nil
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	run, err := startAgentRun(ctx, localcluster.Options{}, n, 1, "", "--metrics-bind-address", metrics)
	if err != nil {
		return nil, err
	}
	defer run.stop()
	pid := run.agents[0].Pid()
	idle, _ := readResident(pid)

	progress("P10: %d workloads on open streams to one agent", n)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	workloads := make([]*sdsclient.Workload, n)
	for i := range workloads {
		workloads[i] = &sdsclient.Workload{Socket: run.sockets[0], UID: uint32(firstUID + i), SpiffeID: spiffeID(i)}
		wg.Add(1)
		go func() { defer wg.Done(); workloads[i].Run(runCtx) }()
	}
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		held := holding(workloads)
		if held == n {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("P10: %d of %d workloads served after 10m", held, n)
		}
	}
	time.Sleep(2 * time.Second) // the last requests deleted
	serving, err := readResident(pid)
	if err != nil {
		return nil, err
	}

	progress("P10: the agent at rest for %s", window)
	before, err := scrapeAll(metrics, "rest_client_requests_total")
	if err != nil {
		return nil, err
	}
	eventsBefore, err := scrapeAPIServer(ctx, run.e.c.Config, "apiserver_watch_events_total")
	if err != nil {
		return nil, err
	}
	time.Sleep(window)
	after, err := scrapeAll(metrics, "rest_client_requests_total")
	if err != nil {
		return nil, err
	}
	eventsAfter, err := scrapeAPIServer(ctx, run.e.c.Config, "apiserver_watch_events_total")
	if err != nil {
		return nil, err
	}
	byResource := growthBy(eventsBefore, eventsAfter, "resource")
	events := 0.0
	for _, v := range byResource {
		events += v
	}
	byMethod := growthBy(before, after, "method")
	writes := writesOf(byMethod)
	stop()
	wg.Wait()
	run.stop()

	progress("P10: kube-apiserver's CPU, idle, then with %d idle agents", idleAgents)
	alone, withAgents, err := idleAgentsCPU(ctx, idleAgents, idleWindow)
	if err != nil {
		return nil, err
	}
	cpuRatio := withAgents / alone
	return []Row{
		{ID: "P10", Measure: fmt.Sprintf("agent's resident memory with %d identities on %d open SDS streams", n, n), Ours: mib(float64(serving.total)),
			Baseline: mib(float64(idle.total)) + " (idle)", Ratio: fmt.Sprintf("%.1f KiB per identity and stream", (float64(serving.total)-float64(idle.total))/float64(n)/1024)},
		{ID: "P10", Measure: fmt.Sprintf("the agent's API requests at rest, %s, %d identities on open streams", window, n), Ours: fmt.Sprintf("%.0f writes; all calls: %s", writes, countsText(byMethod)),
			Target: "0 writes", Met: met(writes == 0),
			Note: "counted by the agent's client-go metrics (rest_client_requests_total)."},
		{ID: "P10", Measure: fmt.Sprintf("watch events kube-apiserver sent at rest, %s, to every watcher: the agent's (its node's CertificateRequests, the MeshIdentities and MeshTrusts, here the Dataplanes of the unix attestor) and cert-manager's", window),
			Ours: fmt.Sprintf("%.0f (%s)", events, countsText(byResource)), Baseline: "—",
			Note: "kube-apiserver's apiserver_watch_events_total, bookmarks included, summed over resources: the agent's watches are not told apart from cert-manager's, so this bounds the agent's."},
		{ID: "P10", Measure: fmt.Sprintf("kube-apiserver's CPU at rest with %d idle agents, each a process with its own client and informers (kubernetes attestor), over %s", idleAgents, idleWindow),
			Ours: fmt.Sprintf("%.2f CPU s/s", withAgents), Baseline: fmt.Sprintf("%.2f CPU s/s (no agent)", alone), Ratio: fmt.Sprintf("%.1f×", cpuRatio),
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
	apiserverCPU := func() (float64, error) {
		time.Sleep(10 * time.Second) // settle
		m := e.cpuMeter(nil)
		time.Sleep(window)
		pid := m.pids["kube-apiserver"]
		if len(pid) == 0 {
			return 0, fmt.Errorf("no kube-apiserver process found")
		}
		return (m.seconds("kube-apiserver") - m.start["kube-apiserver"]) / window.Seconds(), nil
	}
	if alone, err = apiserverCPU(); err != nil {
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
	withAgents, err = apiserverCPU()
	return alone, withAgents, err
}

// growthBy is how much each counter grew from before to after, summed by
// the values of some of its labels, joined by spaces (empty values left
// out); counters that did not grow are left out.
func growthBy(before, after map[string]float64, labels ...string) map[string]float64 {
	out := map[string]float64{}
	for set, v := range after {
		if v <= before[set] {
			continue
		}
		values := map[string]string{}
		for _, part := range strings.Split(set, ",") {
			if name, value, ok := strings.Cut(part, "="); ok {
				values[name] = strings.Trim(value, `"`)
			}
		}
		var key []string
		for _, l := range labels {
			if values[l] != "" {
				key = append(key, values[l])
			}
		}
		if len(key) > 0 {
			out[strings.Join(key, " ")] += v - before[set]
		}
	}
	return out
}

// countsText lists counts as "name count", sorted, or "none".
func countsText(counts map[string]float64) string {
	var parts []string
	for name, v := range counts {
		parts = append(parts, fmt.Sprintf("%s %.0f", name, v))
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
