package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/sdsclient"
)

// fleetAgents is how many agents P7 spreads its workloads over, as on as
// many nodes.
const fleetAgents = 10

// renewalLifetime is the certificates' lifetime in P9.
const renewalLifetime = 2 * time.Minute

// agentFleet measures P7, issuance through 10 agents, each a process with a
// socket of its own, to N Envoy-shaped SDS clients, each connecting as a
// Unix user of its own, against (a) cert-manager's CA signer alone on N
// bare requests; and, at the first size, P9: the renewals of those
// certificates, of 2 minutes, pushed on the open streams.
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
		a, aCost, err := signerAlone(ctx, n, "")
		if err != nil {
			return nil, fmt.Errorf("P7 (a): %w", err)
		}
		progress("P7: N=%d: (a) %s; %s", n, a.Round(100*time.Millisecond), aCost)
		duration := ""
		if i == 0 {
			duration = renewalLifetime.String()
		}
		run, err := startAgentRun(ctx, localcluster.Options{}, n, fleetAgents, duration)
		if err != nil {
			return nil, err
		}
		r, err := run.fleet(ctx, n, i == 0, o.ProfileDir, progress)
		run.stop()
		if err != nil {
			return nil, err
		}
		ratio := a.Seconds() / r.took.Seconds()
		rows = append(rows, Row{ID: "P7",
			Measure:  fmt.Sprintf("N=%d workloads over %d agents, first request to every workload holding a verified SVID, vs (a) the CA signer alone on N bare requests", n, fleetAgents),
			Ours:     fmt.Sprintf("%s (%.0f/s)", r.took.Round(100*time.Millisecond), float64(n)/r.took.Seconds()),
			Baseline: fmt.Sprintf("%s (%.0f/s)", a.Round(100*time.Millisecond), float64(n)/a.Seconds()),
			Ratio:    fmt.Sprintf("%.2f× of (a)", ratio), Target: "≥ 0.8× of (a)", Met: met(ratio >= 0.8),
			Note: fmt.Sprintf("N=%d: each agent a `meshcert agent` process with the unix attestor and its default flags (10 workers, 20 requests in flight), each workload an SDS stream asking for its SPIFFE ID and ALL, as Kuma's Spire provider has Envoy ask, whose every response is checked (chain to ALL's bundle, key, URI) and ACKed. From the first request, CPU seconds and kube-apiserver's writes: (a) %s; agents %s.", n, aCost, r.cost)})
		if r.renewals != nil {
			rows = append(rows, *r.renewals)
		}
	}
	return rows, nil
}

type fleetResult struct {
	took time.Duration
	// cost is the CPU each process used, and kube-apiserver's writes.
	cost     string
	renewals *Row
}

// fleet starts n workloads, workload i on agent i mod the agents, and
// times them to their SVIDs; with renewals, it then keeps their streams
// open through a lifetime and measures the renewals pushed on them.
func (r *agentRun) fleet(ctx context.Context, n int, renewals bool, profileDir string, progress func(string, ...any)) (fleetResult, error) {
	workloads := make([]*sdsclient.Workload, n)
	for i := range workloads {
		workloads[i] = &sdsclient.Workload{Socket: r.sockets[i%len(r.sockets)], UID: uint32(firstUID + i), SpiffeID: spiffeID(i)}
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	open := r.watchAgentRequests(runCtx)

	progress("P7: N=%d: %d workloads over %d agents", n, n, len(r.agents))
	cpu := r.e.cpuMeter(r.agentPIDs())
	writes := r.e.countWrites(ctx)
	// Where kube-apiserver's time goes, next to P3's profile of (a) at the
	// same N.
	profiled := r.e.profileAPIServer(ctx, profileDir, fmt.Sprintf("p7-agents-%d-kube-apiserver", n), n)
	profiledAgent := func() error { return nil }
	if profileDir != "" {
		profiledAgent = profile(ctx, http.DefaultClient, "http://"+r.pprof, filepath.Join(profileDir, fmt.Sprintf("p7-agents-%d-agent.pprof", n)), n)
	}
	start := time.Now()
	for _, w := range workloads {
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(runCtx) }()
	}
	for holding(workloads) < n {
		if time.Since(start) > 30*time.Minute {
			return fleetResult{}, fmt.Errorf("P7: %d of %d workloads hold an SVID after 30m", holding(workloads), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res := fleetResult{took: time.Since(start), cost: cpu.String()}
	// The agents delete each request once delivered: the last deletes land
	// after the last workload holds its SVID.
	time.Sleep(2 * time.Second)
	res.cost += "; " + writes.perIdentity(ctx, n)
	if err := errors.Join(profiled(), profiledAgent()); err != nil {
		progress("P7: no profiles: %v", err)
	}
	progress("P7: N=%d: %s; %s", n, res.took.Round(100*time.Millisecond), res.cost)
	if !renewals {
		return res, nil
	}

	progress("P9: keeping %d streams open through their certificates' lifetime of %s", n, renewalLifetime)
	open.reset()
	var lastExpiry time.Time
	for _, w := range workloads {
		lastExpiry = latestTime(lastExpiry, w.History()[0].Leaf.NotAfter)
	}
	for time.Now().Before(lastExpiry.Add(5 * time.Second)) {
		done := 0
		for _, w := range workloads {
			if len(w.History()) > 1 {
				done++
			}
		}
		if done == n {
			break
		}
		time.Sleep(time.Second)
	}
	var fractions []float64
	perSecond := map[int64]int{}
	late := 0
	for _, w := range workloads {
		h := w.History()
		first := h[0].Leaf
		if len(h) < 2 || !h[1].Received.Before(first.NotAfter) {
			late++
			continue
		}
		lifetime := first.NotAfter.Sub(first.NotBefore)
		fractions = append(fractions, float64(h[1].Received.Sub(first.NotBefore))/float64(lifetime))
		perSecond[h[1].Received.Unix()]++
	}
	slices.Sort(fractions)
	peak := 0
	for _, c := range perSecond {
		peak = max(peak, c)
	}
	spread := "none"
	if len(fractions) > 0 {
		lo, hi := percentile(fractions, 0.05), percentile(fractions, 0.95)
		spread = fmt.Sprintf("pushed %.0f–%.0f s after issuance (p5–p95, %.0f%%–%.0f%% of the lifetime), at most %d/s",
			lo*renewalLifetime.Seconds(), hi*renewalLifetime.Seconds(), 100*lo, 100*hi, peak)
	}
	res.renewals = &Row{ID: "P9",
		Measure:  fmt.Sprintf("renewal pushes: %d certificates of %s on open streams", n, renewalLifetime),
		Ours:     fmt.Sprintf("%d of %d pushed before the old one expired; %s; at most %d requests open at once", n-late, n, spread, open.most()),
		Target:   "every one before its expiry",
		Met:      met(late == 0),
		Baseline: "—",
	}
	progress("P9: %s", res.renewals.Ours)
	return res, nil
}

func latestTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// agentRequests follows the bench mesh's CertificateRequests through a
// watch: the largest number open at once, and the name of each identity's
// latest request, to find it in kube-apiserver's audit log.
type agentRequests struct {
	mu         sync.Mutex
	open, peak int
	names      map[string]string
}

func (o *agentRequests) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.peak = o.open
}

func (o *agentRequests) most() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.peak
}

// nameOf is the name of the latest request for the SPIFFE ID.
func (o *agentRequests) nameOf(spiffeID string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.names[spiffeID]
}

// watchAgentRequests follows the agents' requests until ctx is done; if the
// watch cannot start, it counts nothing.
func (r *agentRun) watchAgentRequests(ctx context.Context) *agentRequests {
	o := &agentRequests{names: map[string]string{}}
	_, w, err := watchRequests(ctx, r.e.c, client.InNamespace(systemNamespace), client.MatchingLabels{kuma.ManagedMeshLabel: "bench"})
	if err != nil {
		return o
	}
	go func() {
		for ev := range w.ResultChan() {
			cr, ok := ev.Object.(*cmapi.CertificateRequest)
			if !ok {
				continue
			}
			o.mu.Lock()
			switch ev.Type {
			case watch.Added:
				o.open++
				o.names[cr.Annotations[issuance.IdentitiesAnnotation]] = cr.Name
			case watch.Deleted:
				o.open--
			}
			o.peak = max(o.peak, o.open)
			o.mu.Unlock()
		}
	}()
	return o
}

// watchRequests watches CertificateRequests with its own client, so that
// its events wait on no other watch.
func watchRequests(ctx context.Context, cluster *localcluster.Cluster, opts ...client.ListOption) (client.WithWatch, watch.Interface, error) {
	c, err := client.NewWithWatch(cluster.Config, client.Options{Scheme: cluster.Client.Scheme()})
	if err != nil {
		return nil, nil, err
	}
	w, err := c.Watch(ctx, &cmapi.CertificateRequestList{}, opts...)
	return c, w, err
}

// holding is how many of the workloads hold an SVID.
func holding(workloads []*sdsclient.Workload) int {
	c := 0
	for _, w := range workloads {
		if _, ok := w.Current(); ok {
			c++
		}
	}
	return c
}
