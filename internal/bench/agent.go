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

// agentIdentities is P8, the time from a workload's first request to its
// certificate through the node agent (a process of its own, with the unix
// attestor), at a steady arrival rate, against bare CertificateRequests at
// the same rate in the same cluster; and P10, the agent's memory with many
// identities held.
func agentIdentities(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	// 300 workloads, so that the p99 is the third slowest, not the slowest.
	latencyN, memoryN := 300, 1000
	if o.Quick {
		latencyN, memoryN = 100, 300
	}
	if os.Geteuid() != 0 {
		return []Row{{ID: "P8", Measure: "first certificate through the agent", Ours: "not run: each workload connects as a Unix user of its own, which needs root"}}, nil
	}
	progress("P8: %d workloads at %.0f/s through the agent, in turns with %d bare CertificateRequests at the same rate", latencyN, agentRate, latencyN)
	run, err := startAgentRun(ctx, memoryN, 1, "", "--max-requests-in-flight", "500", "--workers", "50")
	if err != nil {
		return nil, err
	}
	defer run.stop()
	idle, err := residentBytes(run.agents[0].Pid())
	if err != nil {
		return nil, err
	}
	csrs, err := bareCSRs(latencyN, func(i int) []string { return []string{fmt.Sprintf("spiffe://bench.example.com/bare/b-%d", i)} }, svidUsages)
	if err != nil {
		return nil, err
	}
	first, bare, err := alternateFirstCertificates(ctx, run, csrs)
	if err != nil {
		return nil, err
	}
	progress("P10: %d identities held by one agent", memoryN)
	if _, err := run.fetchAtRate(ctx, latencyN, memoryN); err != nil {
		return nil, err
	}
	held, err := residentBytes(run.agents[0].Pid())
	if err != nil {
		return nil, err
	}
	slices.Sort(first)
	slices.Sort(bare)
	p50, p99 := percentile(first, 0.50), percentile(first, 0.99)
	b50, b99 := percentile(bare, 0.50), percentile(bare, 0.99)
	progress("P8: p50 %s, p99 %s (bare: %s, %s)", ms(p50), ms(p99), ms(b50), ms(b99))
	return []Row{
		{ID: "P8", Measure: fmt.Sprintf("first certificate through the agent, %d workloads at %.0f/s, vs bare CertificateRequests: p50", latencyN, agentRate),
			Ours: ms(p50), Baseline: ms(b50), Ratio: fmt.Sprintf("%.2f×", float64(p50)/float64(b50))},
		{ID: "P8", Measure: "the same: p99", Ours: ms(p99), Baseline: ms(b99), Ratio: fmt.Sprintf("%.2f×", float64(p99)/float64(b99)),
			Target: "≤ 1.5×", Met: met(float64(p99) <= 1.5*float64(b99))},
		{ID: "P10", Measure: fmt.Sprintf("agent's resident memory with %d identities held, vs idle", memoryN), Ours: mib(held),
			Baseline: mib(idle), Ratio: fmt.Sprintf("%.1f KiB per identity", (float64(held)-float64(idle))/float64(memoryN)/1024),
			Note: "an identity is held a minute after its last connection ends, so those of workloads that fetched and left still count."},
	}, nil
}

// svidUsages are the key usages of the agent's ECDSA P-256 SVIDs, which the
// bare requests of P8 carry too.
var svidUsages = issuance.SVIDUsages(issuance.ECDSAP256)

// p8Rounds is how many turns each side of P8 takes.
const p8Rounds = 10

// alternateFirstCertificates times first certificates through the agent and
// bare round trips in the one cluster, in alternating rounds at agentRate,
// each side first in every other round: both sides so meet the same API
// server, and neither adds to the other's load.
func alternateFirstCertificates(ctx context.Context, run *agentRun, csrs [][]byte) (first, bare []time.Duration, err error) {
	followCtx, stop := context.WithCancel(ctx)
	defer stop()
	b, err := followBareRequests(followCtx, run.e)
	if err != nil {
		return nil, nil, err
	}
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
// signing through an informer, the way the agent learns of its own.
type bareRequests struct {
	c     client.Client
	ready *nameTimes
}

const bareNamespace = "bench-bare"

func followBareRequests(ctx context.Context, e *env) (*bareRequests, error) {
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, bareNamespace); err != nil {
		return nil, err
	}
	b := &bareRequests{c: e.c.Client, ready: &nameTimes{times: map[string]time.Time{}}}
	return b, follow(ctx, e, &cmapi.CertificateRequest{}, bareNamespace, func(o client.Object) {
		if ready(o.(*cmapi.CertificateRequest).Status.Conditions) {
			b.ready.see(o.GetName())
		}
	})
}

// roundTrips creates a CertificateRequest for each CSR at agentRate, named
// from the index given, and returns each one's time from its creation to its
// Ready condition, in the order of the CSRs.
func (b *bareRequests) roundTrips(ctx context.Context, csrs [][]byte, from int) ([]time.Duration, error) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / agentRate))
	defer tick.Stop()
	started := make([]time.Time, len(csrs))
	for i, csr := range csrs {
		<-tick.C
		started[i] = time.Now()
		if err := b.c.Create(ctx, &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("b-%d", from+i), Namespace: bareNamespace},
			Spec: cmapi.CertificateRequestSpec{Request: csr, IssuerRef: clusterIssuer, Duration: &metav1.Duration{Duration: 24 * time.Hour},
				Usages: svidUsages},
		}); err != nil {
			return nil, err
		}
	}
	out := make([]time.Duration, len(csrs))
	deadline := time.Now().Add(time.Minute)
	for i := range csrs {
		for {
			if at, ok := b.ready.get(fmt.Sprintf("b-%d", from+i)); ok {
				out[i] = at.Sub(started[i])
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("bare CertificateRequest b-%d not ready after a minute", from+i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return out, nil
}

type agentRun struct {
	e       *env
	agents  []*localcluster.Process
	sockets []string
}

// startAgentRun starts a cluster, a MeshIdentity for
// mesh bench whose certificates last duration (the default if ""), n
// Dataplanes each annotated with a Unix user of its own, and the agents, each
// a process with a socket of its own, as on a node of its own, with the flags
// given.
func startAgentRun(ctx context.Context, n, agents int, duration string, flags ...string) (*agentRun, error) {
	e, err := newEnv(ctx, localcluster.Options{}, signerControllers...)
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
			Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire, Spire: []byte(`{}`)},
		},
	}
	if duration != "" {
		mid.Annotations[kuma.DurationAnnotation] = duration
	}
	if err := c.Create(ctx, mid); err != nil {
		return err
	}
	// Workload i is bound to the node of agent i mod agents, which it calls.
	if err := parallel(n, func(i int) error {
		return c.Create(ctx, &kuma.DataplaneResource{
			ObjectMeta: metav1.ObjectMeta{Name: workloadName(i), Namespace: benchNamespace,
				Labels:      map[string]string{"app": "bench", kuma.WorkloadLabel: workloadName(i)},
				Annotations: map[string]string{agent.UnixUIDAnnotation: strconv.Itoa(firstUID + i), agent.NodeNameAnnotation: benchNode(i % agents)}},
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
		args := []string{"--system-namespace", systemNamespace, "--node-name", benchNode(k), "--socket", socket, "--attestor", "unix"}
		p, err := r.e.c.StartAgentProcess(filepath.Join(dir, "agent.log"), "", append(args, flags...)...)
		if err != nil {
			return err
		}
		r.agents, r.sockets = append(r.agents, p), append(r.sockets, socket)
	}
	return nil
}

func workloadName(i int) string { return fmt.Sprintf("w-%d", i) }

// benchNode is the node of agent k, to which its workloads are bound.
func benchNode(k int) string { return fmt.Sprintf("bench-%d", k) }

// spiffeID is workload i's identity under the bench MeshIdentity.
func spiffeID(i int) string { return "spiffe://bench.example.com/workload/" + workloadName(i) }

// fetchAtRate starts the workloads from..to-1 at agentRate, each an
// Envoy-shaped SDS client connecting as a Unix user of its own, and returns
// each one's time from its first request to its verified certificate.
func (r *agentRun) fetchAtRate(ctx context.Context, from, to int) ([]time.Duration, error) {
	out := make([]time.Duration, to-from)
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
			out[i-from] = time.Since(start)
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
