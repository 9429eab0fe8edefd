package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/sdsclient"
)

// agentRate is how fast new workloads arrive in P8.
const agentRate = 20.0

// firstUID is the Unix user of workload 0: each workload is a process of a
// user of its own, which the unix attestor matches to its Dataplane.
const firstUID = 20000

// agentIdentities measures the node agent, run as its own process with the
// unix attestor: P8, the time from a workload's first request to its
// certificate, at a steady arrival rate, next to bare CertificateRequests
// at the same rate; and P10, the agent's memory with many identities.
func agentIdentities(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	// 300 workloads, so that the p99 is the third slowest, not the slowest.
	latencyN, memoryN := 300, 1000
	if o.Quick {
		latencyN, memoryN = 100, 300
	}
	if os.Geteuid() != 0 {
		return []Row{{ID: "P8", Measure: "first certificate through the agent", Ours: "not run: each workload is a process of its own Unix user, which needs root"}}, nil
	}

	progress("P8: %d workloads at %.0f/s, each fetching its SVID from the agent, in turns with %d bare CertificateRequests at the same rate", latencyN, agentRate, latencyN)
	// kube-apiserver's collections, to tell which round trips they overlap.
	gc := &gcTrace{}
	// Where each round trip's time goes, by kube-apiserver's own clock.
	auditDir, err := os.MkdirTemp("", "bench-audit")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(auditDir)
	auditLog := filepath.Join(auditDir, "audit.log")
	run, err := startAgentRun(ctx, localcluster.Options{APIServerGCTrace: gc, APIServerAuditLog: auditLog}, memoryN, 1, "", "--max-requests-in-flight", "500", "--workers", "50")
	if err != nil {
		return nil, err
	}
	defer run.stop()
	requestsCtx, stopRequests := context.WithCancel(ctx)
	defer stopRequests()
	requests := run.watchAgentRequests(requestsCtx)
	idle, _ := readResident(run.agents[0].Pid())
	csrs, err := bareCSRs(latencyN, func(i int) []string { return []string{fmt.Sprintf("spiffe://bench.example.com/bare/b-%d", i)} }, svidUsages)
	if err != nil {
		return nil, err
	}
	// The machine's CPU pressure, to tell which round trips waited for a CPU.
	turnsCtx, endTurns := context.WithCancel(ctx)
	pressure, pressureErr := watchCPUPressure(turnsCtx)
	turns := span{start: time.Now()}
	first, bare, err := alternateFirstCertificates(ctx, run, csrs)
	endTurns()
	if err != nil {
		return nil, err
	}
	turns.end = time.Now()
	marks := gc.marksIn(turns)
	progress("P10: %d identities held by one agent", memoryN)
	if _, err := run.fetchAtRate(ctx, latencyN, memoryN); err != nil {
		return nil, err
	}
	held, err := readResident(run.agents[0].Pid())
	if err != nil {
		return nil, err
	}

	all, bareAll := sortedTimes(first, nil), sortedTimes(bare, nil)
	p50, p99 := percentile(all, 0.50), percentile(all, 0.99)
	b50, b99 := percentile(bareAll, 0.50), percentile(bareAll, 0.99)
	agentClear, bareClear := sortedTimes(first, marks), sortedTimes(bare, marks)
	c99, bc99 := percentile(agentClear, 0.99), percentile(bareClear, 0.99)
	perIdentity := (float64(held.total) - float64(idle.total)) / float64(memoryN)
	split := "kube-apiserver's audit log was not read: "
	if events, err := readAuditLog(auditLog); err != nil {
		split += err.Error() + "."
	} else {
		byRequest := timelines(events)
		split = phaseNote(
			splitTrips(first, func(i int) string { return systemNamespace + "/" + requests.nameOf(spiffeID(i)) }, byRequest),
			splitTrips(bare, func(i int) string { return bareNamespace + "/" + bareName(i) }, byRequest),
			marks)
	}
	return []Row{
		{ID: "P8", Measure: fmt.Sprintf("first certificate through the agent, %d workloads at %.0f/s: p50", latencyN, agentRate),
			Ours: ms(p50), Baseline: ms(b50) + " (bare CertificateRequest)", Ratio: fmt.Sprintf("%.2f×", float64(p50)/float64(b50))},
		{ID: "P8", Measure: "… p99", Ours: ms(p99), Baseline: ms(b99), Ratio: fmt.Sprintf("%.2f×", float64(p99)/float64(b99)),
			Target: "≤ 1.5×", Met: met(float64(p99) <= 1.5*float64(b99)),
			Note: "from a workload's first SDS request (an Envoy-shaped client asking for its SPIFFE ID and ALL, connecting as a Unix user of its own) to its verified certificate: the connection, attestation, the key, the CSR, the request, cert-manager's approver and CA signer, and the check. The baseline is the create-to-Ready time, as a watch sees it, of bare CertificateRequests with CSRs made beforehand, through the same controllers, in the same cluster at the same rate, the two sides taking 10 turns each, so that both meet the same API server."},
		{ID: "P8", Measure: "… p99 of the round trips that no mark phase of kube-apiserver's garbage collector overlapped",
			Ours:     fmt.Sprintf("%s (%d of %d)", ms(c99), len(agentClear), len(all)),
			Baseline: fmt.Sprintf("%s (%d of %d)", ms(bc99), len(bareClear), len(bareAll)),
			Ratio:    fmt.Sprintf("%.2f×", float64(c99)/float64(bc99)),
			Note:     gcNote(marks, turns, p8Rounds, first, bare, p99, b99) + " " + pressureNote(pressure, pressureErr, first, bare, p99, b99) + " " + split},
		{ID: "P10", Measure: fmt.Sprintf("agent's resident memory with %d identities held", memoryN), Ours: mib(float64(held.total)),
			Baseline: mib(float64(idle.total)) + " (idle)", Ratio: fmt.Sprintf("%.1f KiB per identity", perIdentity/1024),
			Note: "each identity's certificate and key are held for a minute after its last connection ends, so the identities of workloads that fetched and exited are still held when this is read; their streams are closed."},
	}, nil
}

// svidUsages are the key usages of the agent's ECDSA P-256 SVIDs, which the
// bare requests of P8 carry too.
var svidUsages = issuance.SVIDUsages(issuance.ECDSAP256)

// p8Rounds is how many turns each side of P8 takes.
const p8Rounds = 10

// alternateFirstCertificates times first certificates through the agent and
// bare round trips in the one cluster, in alternating rounds at agentRate,
// each side first in every other round. Both sides so meet the same API
// server and its garbage collections, and neither adds to the other's load.
func alternateFirstCertificates(ctx context.Context, run *agentRun, csrs [][]byte) (first, bare []span, err error) {
	b, err := watchBareRequests(ctx, run.e.c)
	if err != nil {
		return nil, nil, err
	}
	defer b.stop()
	n := len(csrs)
	for r := range p8Rounds {
		from, to := r*n/p8Rounds, (r+1)*n/p8Rounds
		sides := []func() error{
			func() error {
				d, err := b.roundTrips(ctx, csrs[from:to], from)
				bare = append(bare, d...)
				return err
			},
			func() error {
				d, err := run.fetchAtRate(ctx, from, to)
				first = append(first, d...)
				return err
			},
		}
		if r%2 == 1 {
			slices.Reverse(sides)
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return nil, nil, err
			}
		}
	}
	return first, bare, nil
}

// bareRequests creates bare CertificateRequests and learns of their
// signing through a watch, the way the agent learns of its own.
type bareRequests struct {
	c      client.WithWatch
	w      watch.Interface
	cancel context.CancelFunc
}

const bareNamespace = "bench-bare"

// bareName names P8's bare request i.
func bareName(i int) string { return fmt.Sprintf("b-%d", i) }

func watchBareRequests(ctx context.Context, cluster *localcluster.Cluster) (*bareRequests, error) {
	if err := localcluster.EnsureNamespace(ctx, cluster.Client, bareNamespace); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	c, w, err := watchRequests(ctx, cluster, client.InNamespace(bareNamespace))
	if err != nil {
		cancel()
		return nil, err
	}
	return &bareRequests{c: c, w: w, cancel: cancel}, nil
}

func (b *bareRequests) stop() {
	b.w.Stop()
	b.cancel()
}

// roundTrips creates a CertificateRequest for each CSR at agentRate, named
// from the index given, and returns each one's time from its creation to its
// Ready condition, in the order of the CSRs.
func (b *bareRequests) roundTrips(ctx context.Context, csrs [][]byte, from int) ([]span, error) {
	n := len(csrs)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(float64(n)/agentRate*float64(time.Second))+time.Minute)
	defer cancel()
	var mu sync.Mutex
	out := make([]span, n)
	pending := make(map[string]int, n)
	created := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Duration(float64(time.Second) / agentRate))
		defer tick.Stop()
		for i, csr := range csrs {
			<-tick.C
			cr := &cmapi.CertificateRequest{
				ObjectMeta: metav1.ObjectMeta{Name: bareName(from + i), Namespace: bareNamespace},
				Spec: cmapi.CertificateRequestSpec{Request: csr, IssuerRef: clusterIssuer, Duration: &metav1.Duration{Duration: 24 * time.Hour},
					Usages: svidUsages},
			}
			mu.Lock()
			pending[cr.Name] = i
			out[i].start = time.Now()
			mu.Unlock()
			if err := b.c.Create(ctx, cr); err != nil {
				created <- err
				return
			}
		}
		created <- nil
	}()
	for done := 0; done < n; {
		select {
		case err := <-created:
			if err != nil {
				return nil, err
			}
			created = nil
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d bare CertificateRequests ready: %w", done, n, ctx.Err())
		case ev, ok := <-b.w.ResultChan():
			if !ok {
				return nil, fmt.Errorf("the watch of bare CertificateRequests ended with %d of %d ready", done, n)
			}
			cr, isRequest := ev.Object.(*cmapi.CertificateRequest)
			if !isRequest || !ready(cr.Status.Conditions) {
				continue
			}
			mu.Lock()
			if i, ok := pending[cr.Name]; ok {
				out[i].end = time.Now()
				delete(pending, cr.Name)
				done++
			}
			mu.Unlock()
		}
	}
	return out, nil
}

type agentRun struct {
	e       *env
	agents  []*localcluster.Process
	sockets []string
	// pprof is the first agent's pprof address.
	pprof string
}

// startAgentRun starts a cluster with the options given, a MeshIdentity for
// mesh bench whose certificates last duration (the default if ""), n
// Dataplanes each annotated with a Unix user of its own, and the agents, each
// a process with a socket of its own, as on a node of its own, with the flags
// given.
func startAgentRun(ctx context.Context, cluster localcluster.Options, n, agents int, duration string, flags ...string) (*agentRun, error) {
	e, err := newEnv(ctx, cluster, signerControllers...)
	if err != nil {
		return nil, err
	}
	r := &agentRun{e: e}
	if err := r.setup(ctx, n, agents, duration, flags); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

func (r *agentRun) setup(ctx context.Context, n, agents int, duration string, flags []string) error {
	c := r.e.c.Client
	if err := localcluster.EnsureNamespace(ctx, c, benchNamespace); err != nil {
		return err
	}
	path, td := "/workload/{{ .Workload }}", "bench.example.com"
	mid := &kuma.MeshIdentityResource{
		ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: systemNamespace, Labels: map[string]string{"kuma.io/mesh": "bench"},
			Annotations: map[string]string{kuma.IssuerNameAnnotation: "mesh-ca", kuma.IssuerKindAnnotation: cmapi.ClusterIssuerKind}},
		Spec: kuma.MeshIdentitySpec{
			Selector: &kuma.IdentitySelector{Dataplane: &kuma.LabelSelector{MatchLabels: map[string]string{"app": "bench"}}},
			SpiffeID: &kuma.SpiffeID{TrustDomain: &td, Path: &path},
			Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire},
		},
	}
	if duration != "" {
		mid.Annotations[kuma.DurationAnnotation] = duration
	}
	if err := c.Create(ctx, mid); err != nil {
		return err
	}
	if err := parallel(n, func(i int) error {
		return c.Create(ctx, &kuma.DataplaneResource{
			ObjectMeta: metav1.ObjectMeta{Name: workloadName(i), Namespace: benchNamespace,
				Labels:      map[string]string{"app": "bench", kuma.WorkloadLabel: workloadName(i)},
				Annotations: map[string]string{agent.UnixUIDAnnotation: strconv.Itoa(firstUID + i)}},
			Mesh: "bench",
			Spec: kumaDataplaneSpec(benchNamespace, workloadName(i), i),
		})
	}); err != nil {
		return err
	}

	for k := range agents {
		dir, err := os.MkdirTemp("", "bench-agent")
		if err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
		socket := filepath.Join(dir, "socket")
		args := []string{"--system-namespace", systemNamespace, "--node-name", fmt.Sprintf("bench-%d", k), "--socket", socket, "--attestor", "unix"}
		if k == 0 {
			pprofPort, err := localcluster.FreePort()
			if err != nil {
				return err
			}
			r.pprof = fmt.Sprintf("127.0.0.1:%d", pprofPort)
			args = append(args, "--pprof-bind-address", r.pprof)
		}
		p, err := r.e.c.StartAgentProcess(filepath.Join(dir, "agent.log"), "", append(args, flags...)...)
		if err != nil {
			return err
		}
		r.agents, r.sockets = append(r.agents, p), append(r.sockets, socket)
	}
	return nil
}

func workloadName(i int) string { return fmt.Sprintf("w-%d", i) }

// spiffeID is workload i's identity under the bench MeshIdentity.
func spiffeID(i int) string { return "spiffe://bench.example.com/workload/" + workloadName(i) }

// agentPIDs are the agents' processes, for the CPU meter.
func (r *agentRun) agentPIDs() map[string][]int {
	var pids []int
	for _, p := range r.agents {
		pids = append(pids, p.Pid())
	}
	return map[string][]int{"the agents": pids}
}

// fetchAtRate starts the workloads from..to-1 at agentRate, each an
// Envoy-shaped SDS client connecting as a Unix user of its own, and returns
// each one's time from its first request to its verified certificate.
func (r *agentRun) fetchAtRate(ctx context.Context, from, to int) ([]span, error) {
	out := make([]span, to-from)
	errs := make(chan error, to-from)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / agentRate))
	defer tick.Stop()
	for i := from; i < to; i++ {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &sdsclient.Workload{Socket: r.sockets[0], UID: uint32(firstUID + i), SpiffeID: spiffeID(i)}
			conn, err := sdsclient.Conn(w.Socket, w.UID)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			callCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			start := time.Now()
			if _, err := w.Once(callCtx, secretv3.NewSecretDiscoveryServiceClient(conn)); err != nil {
				errs <- fmt.Errorf("workload %d: %w", i, err)
				return
			}
			out[i-from] = span{start, time.Now()}
		}()
	}
	wg.Wait()
	close(errs)
	return out, <-errs
}

func (r *agentRun) stop() {
	for _, p := range r.agents {
		p.Kill()
	}
	r.e.stop()
}
