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
	"sync"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
func agentIdentities(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	// 300 workloads, so that the p99 is the third slowest, not the slowest.
	latencyN, memoryN := 300, 1000
	if o.Quick {
		latencyN, memoryN = 100, 300
	}
	progress("P8: %d workloads at %.0f/s through the agent, in turns with %d bare CertificateRequests at the same rate", latencyN, agentRate, latencyN)
	flags := []string{"--max-requests-in-flight", "500", "--workers", "50"}
	run, err := startAgentRun(ctx, approveAll, memoryN, 1, "", flags...)
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
	if _, err := atRate(latencyN, memoryN, run.firstCertificate(ctx)); err != nil {
		return nil, err
	}
	held, err := residentBytes(run.agents[0].Pid())
	if err != nil {
		return nil, err
	}
	run.stop()

	progress("P8: the same after per-node approval")
	approved, err := startAgentRun(ctx, approveByNode, memoryN, 1, "", flags...)
	if err != nil {
		return nil, err
	}
	defer approved.stop()
	firstApproved, bareApproved, err := alternateFirstCertificates(ctx, approved, csrs)
	if err != nil {
		return nil, err
	}
	approved.stop()

	rows := firstCertificateRows(fmt.Sprintf("first certificate through the agent, %d workloads at %.0f/s, vs bare CertificateRequests: p50", latencyN, agentRate),
		"the same: p99", first, bare)
	after := firstCertificateRows("after per-node approval: p50", "after per-node approval: p99", firstApproved, bareApproved)
	after[1].Note = "after per-node approval: cert-manager's default approver off, meshcert approving each agent request by the node its pod-bound token names " +
		"(before: cert-manager's default approver approves every request). With that approver off, the bench approves each bare request " +
		"as it would: on its informer's event, with one status write."
	return append(append(rows, after...),
		Row{ID: "P10", Measure: fmt.Sprintf("agent's resident memory with %d identities held, vs idle", memoryN), Ours: mib(held),
			Baseline: mib(idle), Ratio: kib(float64(held)-float64(idle), float64(memoryN)) + " per identity",
			Note: "an identity is held a minute after its last connection ends, so those of workloads that fetched and left still count."}), nil
}

// firstCertificateRows are P8's rows: the p50 and the p99, with its target,
// of first certificates through the agent against bare round trips.
func firstCertificateRows(p50Measure, p99Measure string, first, bare []time.Duration) []Row {
	slices.Sort(first)
	slices.Sort(bare)
	p50, p99 := percentile(first, 0.50), percentile(first, 0.99)
	b50, b99 := percentile(bare, 0.50), percentile(bare, 0.99)
	return []Row{
		{ID: "P8", Measure: p50Measure, Ours: ms(p50), Baseline: ms(b50), Ratio: times(float64(p50) / float64(b50))},
		{ID: "P8", Measure: p99Measure, Ours: ms(p99), Baseline: ms(b99), Ratio: times(float64(p99) / float64(b99)),
			Target: "≤ 1.5×", Met: met(float64(p99) <= 1.5*float64(b99))},
	}
}

// svidUsages are the key usages of the agent's ECDSA P-256 SVIDs, which the
// bare requests of P8 carry too.
var svidUsages = issuance.SVIDUsages(issuance.ECDSAP256)

// p8Rounds is how many turns each side of P8 takes.
const p8Rounds = 10

// alternateFirstCertificates times first certificates through the agent and
// bare round trips in the one cluster, in alternating rounds at agentRate,
// each side first in every other round: both sides so meet the same API
// server, and neither adds to the other's load. A bare round trip lasts from
// the request's creation until an informer sees it Ready, the way the agent
// learns of its own.
func alternateFirstCertificates(ctx context.Context, run *agentRun, csrs [][]byte) (first, bare []time.Duration, err error) {
	const ns = "bench-bare"
	c := run.e.c.Client
	if err := localcluster.EnsureNamespace(ctx, c, ns); err != nil {
		return nil, nil, err
	}
	followCtx, stop := context.WithCancel(ctx)
	defer stop()
	ready := &firstSeen{at: map[string]time.Time{}}
	if err := follow(followCtx, run.e, &cmapi.CertificateRequest{}, ns, func(o client.Object) {
		cr := o.(*cmapi.CertificateRequest)
		if isReady(cr.Status.Conditions) {
			ready.see(o.GetName())
		}
		if run.approver == approveByNode && !apiutil.CertificateRequestIsApproved(cr) && !apiutil.CertificateRequestIsDenied(cr) {
			// cert-manager's default approver is off for the agents' sake:
			// the bench approves the bare requests as it would, from an
			// informer's event, so that both sides pay the same hop.
			go approveBare(ctx, c, cr.DeepCopy())
		}
	}); err != nil {
		return nil, nil, err
	}
	bareRoundTrip := func(i int) (time.Duration, error) {
		name, start := fmt.Sprintf("b-%d", i), time.Now()
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: cmapi.CertificateRequestSpec{Request: csrs[i], IssuerRef: clusterIssuer, Duration: &metav1.Duration{Duration: 24 * time.Hour},
				Usages: svidUsages},
		}
		if err := c.Create(ctx, cr); err != nil {
			return 0, err
		}
		for deadline := start.Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if at, ok := ready.when(name); ok {
				return at.Sub(start), nil
			}
		}
		return 0, fmt.Errorf("bare CertificateRequest %s not ready after a minute", name)
	}
	n := len(csrs)
	for r := range p8Rounds {
		from, to := r*n/p8Rounds, (r+1)*n/p8Rounds
		sides := []func() error{
			func() error {
				d, err := atRate(from, to, bareRoundTrip)
				bare = append(bare, d...)
				return err
			},
			func() error {
				d, err := atRate(from, to, run.firstCertificate(ctx))
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

// approveBare approves a bare request, as cert-manager's default approver
// would; a failure shows as the request never getting Ready.
func approveBare(ctx context.Context, c client.Client, cr *cmapi.CertificateRequest) {
	approved := cr.DeepCopy()
	apiutil.SetCertificateRequestCondition(approved, cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "bench", "approved by the bench")
	_ = c.Status().Patch(ctx, approved, client.MergeFrom(cr))
}

// atRate calls measure for from..to-1 at agentRate, each in a goroutine of
// its own whatever the others' pace, and returns what they measured.
func atRate(from, to int, measure func(i int) (time.Duration, error)) ([]time.Duration, error) {
	out, errs := make([]time.Duration, to-from), make([]error, to-from)
	tick := time.NewTicker(time.Duration(float64(time.Second) / agentRate))
	defer tick.Stop()
	var wg sync.WaitGroup
	for i := from; i < to; i++ {
		<-tick.C
		wg.Go(func() { out[i-from], errs[i-from] = measure(i) })
	}
	wg.Wait()
	return out, firstError(errs)
}

// approver is who approves the agents' CertificateRequests in a run.
type approver int

const (
	// approveAll is cert-manager's default approver, which approves every
	// request: meshcert before per-node approval.
	approveAll approver = iota
	// approveByNode is meshcert's approval by node, with cert-manager's
	// default approver off, and each agent authenticated as the kubelet
	// authenticates an agent's Pod.
	approveByNode
)

// agentRun is a cluster serving mesh bench through agents.
type agentRun struct {
	e        *env
	approver approver
	agents   []*localcluster.Process
	sockets  []string
	// stopApproval, if set, stops what approveByNode started.
	stopApproval func()
}

// startAgentRun starts a cluster where by approves the agents' requests, a
// MeshIdentity for mesh bench whose certificates last duration (the default
// if ""), n Dataplanes each annotated with a Unix user of its own, and the
// agents, each a process with a socket of its own, as on a node of its own,
// with the flags given.
func startAgentRun(ctx context.Context, by approver, n, agents int, duration string, flags ...string) (_ *agentRun, err error) {
	controllers := signerControllers
	if by == approveByNode {
		controllers = slices.DeleteFunc(slices.Clone(signerControllers), func(c string) bool { return c == "certificaterequests-approver" })
	}
	e, err := newEnv(ctx, localcluster.Options{}, controllers...)
	if err != nil {
		return nil, err
	}
	r := &agentRun{e: e, approver: by}
	defer func() {
		if err != nil {
			r.stop()
		}
	}()
	c := e.c.Client
	if err := localcluster.EnsureNamespace(ctx, c, benchNamespace); err != nil {
		return nil, err
	}
	if by == approveByNode {
		if err := r.startApproval(ctx); err != nil {
			return nil, err
		}
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
		return nil, err
	}
	// Workload i is bound to the node of agent i mod agents, which it calls.
	if err := parallel(n, func(i int) error {
		return c.Create(ctx, &kuma.DataplaneResource{
			ObjectMeta: metav1.ObjectMeta{Name: workloadName(i), Namespace: benchNamespace,
				Labels:      map[string]string{"app": "bench", kuma.WorkloadLabel: workloadName(i)},
				Annotations: map[string]string{kuma.UnixUIDAnnotation: strconv.Itoa(firstUID + i), kuma.NodeNameAnnotation: benchNode(i % agents)}},
			Mesh: "bench",
			Spec: kumaDataplaneSpec(benchNamespace, workloadName(i), i),
		})
	}); err != nil {
		return nil, err
	}
	for k := range agents {
		dir, err := os.MkdirTemp("", "bench-agent")
		if err == nil {
			err = os.Chmod(dir, 0o755) // each workload's user reaches the socket
		}
		if err != nil {
			return nil, err
		}
		socket, kubeconfig := filepath.Join(dir, "socket"), ""
		if by == approveByNode {
			kubeconfig = filepath.Join(dir, "kubeconfig")
			if err := r.writeAgentKubeconfig(ctx, benchNode(k), kubeconfig); err != nil {
				return nil, err
			}
		}
		args := []string{"--system-namespace", systemNamespace, "--node-name", benchNode(k), "--socket", socket, "--attestor", "unix"}
		p, err := e.c.StartAgentProcess(filepath.Join(dir, "agent.log"), kubeconfig, append(args, flags...)...)
		if err != nil {
			return nil, err
		}
		r.agents, r.sockets = append(r.agents, p), append(r.sockets, socket)
	}
	return r, nil
}

// agentRelease is the release of the chart whose agent ServiceAccount and
// RBAC the agents use under approveByNode.
const agentRelease = "bench"

// agentAccount is that release's agent ServiceAccount, in systemNamespace.
const agentAccount = agentRelease + "-meshcert-agent"

// startApproval sets up approveByNode: the chart's ServiceAccount, RBAC and
// admission policy of the agents; the webhook that records each request's
// requester, as cert-manager's does; and meshcert, in this process, running
// only the agents' approver.
func (r *agentRun) startApproval(ctx context.Context) error {
	c := r.e.c
	manifests, err := localcluster.RenderChart(agentRelease, systemNamespace, "--set", "agent.enabled=true", "--set", "agent.attestor=unix")
	if err != nil {
		return err
	}
	kinds := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
	for _, obj := range manifests {
		if !strings.Contains(obj.GetName(), "-agent") || !slices.Contains(kinds, obj.GetKind()) {
			continue
		}
		if err := c.Client.Patch(ctx, obj, client.Apply, client.FieldOwner("helm"), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying the chart's %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	r.stopApproval = cancel
	if err := c.StartRequesterIdentity(ctx); err != nil {
		return err
	}
	cfg, err := c.MeshcertConfig(systemNamespace)
	if err != nil {
		return err
	}
	cfg.WebhookEnabled, cfg.ReconcilerEnabled = false, false
	cfg.ApproveAgentsOf = systemNamespace + "/" + agentAccount
	m, err := c.StartMeshcert(ctx, cfg, localcluster.MeshcertOptions{Logs: io.Discard})
	if err != nil {
		return err
	}
	r.stopApproval = func() {
		_ = m.Stop()
		cancel()
	}
	return nil
}

// writeAgentKubeconfig writes, at path, a kubeconfig with what the kubelet
// gives an agent's Pod on node: a token of agentAccount bound to that Pod,
// which names the node to the approver.
func (r *agentRun) writeAgentKubeconfig(ctx context.Context, node, path string) error {
	c := r.e.c
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: agentAccount + "-" + node},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: agentAccount,
			Containers: []corev1.Container{{Name: "agent", Image: "meshcert"}}},
	}
	if err := c.Client.Create(ctx, pod); err != nil {
		return err
	}
	token := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
		ExpirationSeconds: ptr.To(int64((24 * time.Hour).Seconds())),
	}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: agentAccount}}
	if err := c.Client.SubResource("token").Create(ctx, sa, token); err != nil {
		return fmt.Errorf("requesting the agent Pod's token: %w", err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["bench"] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: c.Config.CAData}
	kc.AuthInfos["agent"] = &clientcmdapi.AuthInfo{Token: token.Status.Token}
	kc.Contexts["agent"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "agent"}
	kc.CurrentContext = "agent"
	return clientcmd.WriteToFile(*kc, path)
}

func workloadName(i int) string { return fmt.Sprintf("w-%d", i) }

// benchNode is the node of agent k, to which its workloads are bound.
func benchNode(k int) string { return fmt.Sprintf("bench-%d", k) }

// spiffeID is workload i's identity under the bench MeshIdentity.
func spiffeID(i int) string { return "spiffe://bench.example.com/workload/" + workloadName(i) }

// firstCertificate measures workload i, an Envoy-shaped SDS client
// connecting as a Unix user of its own: the time from its first request to
// its verified certificate.
func (r *agentRun) firstCertificate(ctx context.Context) func(i int) (time.Duration, error) {
	return func(i int) (time.Duration, error) {
		w := &sdsclient.Workload{Socket: r.sockets[0], UID: uint32(firstUID + i), SpiffeID: spiffeID(i)}
		conn, err := sdsclient.Conn(w.Socket, w.UID)
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		start := time.Now()
		if _, err := w.Once(callCtx, secretv3.NewSecretDiscoveryServiceClient(conn)); err != nil {
			return 0, fmt.Errorf("workload %d: %w", i, err)
		}
		return time.Since(start), nil
	}
}

// stop stops the run; again, it does nothing.
func (r *agentRun) stop() {
	for _, p := range r.agents {
		p.Kill()
	}
	if r.stopApproval != nil {
		r.stopApproval()
		r.stopApproval = nil
	}
	r.e.stop()
}

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
func agentFleet(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	sizes := []int{1000, 10000}
	if o.Quick {
		sizes = []int{300}
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
		// Both runs have the same lifetime; P9 is measured in the first.
		through := func(by approver, renewals bool) (time.Duration, []Row, error) {
			run, err := startAgentRun(ctx, by, n, fleetAgents, duration)
			if err != nil {
				return 0, nil, err
			}
			defer run.stop()
			return run.fleet(ctx, n, renewals, progress)
		}
		progress("P7: N=%d: %d workloads over %d agents", n, n, fleetAgents)
		took, renewals, err := through(approveAll, i == 0)
		if err != nil {
			return nil, err
		}
		progress("P7: N=%d: the same after per-node approval", n)
		tookApproved, _, err := through(approveByNode, false)
		if err != nil {
			return nil, err
		}
		ratio, ratioApproved := a.Seconds()/took.Seconds(), a.Seconds()/tookApproved.Seconds()
		after := Row{ID: "P7", Measure: "after per-node approval: the same",
			Ours: rate(tookApproved, n), Baseline: rate(a, n), Ratio: times(ratioApproved), Target: "≥ 0.8×", Met: met(ratioApproved >= 0.8)}
		if i == 0 {
			after.Note = "after per-node approval: cert-manager's default approver off, meshcert approving each agent request by the node its pod-bound token names " +
				"(before: cert-manager's default approver approves every request); (a) is the one baseline of both rows."
		}
		rows = append(rows, Row{ID: "P7",
			Measure: fmt.Sprintf("%d workloads over %d agents to verified SVIDs, vs (a) the CA signer alone on bare requests", n, fleetAgents),
			Ours:    rate(took, n), Baseline: rate(a, n), Ratio: times(ratio), Target: "≥ 0.8×", Met: met(ratio >= 0.8)}, after)
		rows = append(rows, renewals...)
	}
	return rows, nil
}

// fleet starts n workloads, workload i on agent i mod the agents, and
// times them to their SVIDs; with renewals, it then keeps their streams
// open through a lifetime and measures the renewals pushed on them (P9).
func (r *agentRun) fleet(ctx context.Context, n int, renewals bool, progress progressFunc) (time.Duration, []Row, error) {
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
		if expiry := w.History()[0].Leaf.NotAfter; expiry.After(lastExpiry) {
			lastExpiry = expiry
		}
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
	return took, []Row{{ID: "P9",
		Measure: fmt.Sprintf("renewals pushed on %d open streams, certificates of %s", n, renewalLifetime),
		Ours:    fmt.Sprintf("%d of %d before expiry; %s", len(pushedAt), n, spread(pushedAt, renewedAt)),
		Target:  "every one before expiry", Met: met(len(pushedAt) == n),
	}}, nil
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

// idleAgent is the rest of P10, what an agent costs once its workloads are
// served: its memory with N identities on N open streams, its API writes
// while idle, and kube-apiserver's CPU with 100 idle agents against an idle
// cluster without them.
func idleAgent(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	n, window, idleAgents, cpuWindow := 1000, 10*time.Minute, 100, 2*time.Minute
	if o.Quick {
		n, window, idleAgents, cpuWindow = 300, time.Minute, 20, 30*time.Second
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	run, err := startAgentRun(ctx, approveAll, n, 1, "", "--metrics-bind-address", metrics)
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
	before, err := scrape(metrics)
	if err != nil {
		return nil, err
	}
	time.Sleep(window)
	after, err := scrape(metrics)
	if err != nil {
		return nil, err
	}
	writes := after.writes - before.writes
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
			Baseline: mib(idle), Ratio: kib(float64(serving)-float64(idle), float64(n)) + " per identity and stream"},
		{ID: "P10", Measure: fmt.Sprintf("the agent's API writes in %s idle, %d open streams", window, n),
			Ours: fmt.Sprintf("%.0f (of %.0f requests)", writes, after.requests-before.requests), Target: "0", Met: met(writes == 0)},
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
