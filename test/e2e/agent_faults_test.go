package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/agent"
	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/sdsclient"
	"github.com/meshcert/meshcert/model"
)

// fleetUID is the Unix user of the fleet's workload 0.
const fleetUID = 30000

// fleet is n workloads of mesh fleet, each the Dataplane of a Unix user of
// its own, and their Envoy-shaped SDS clients, one per stream.
type fleet struct {
	ns        string
	workloads []*sdsclient.Workload
}

func newFleet(t *testing.T, ns string, n, streamsEach int) *fleet {
	t.Helper()
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	t.Cleanup(func() {
		_ = testEnv.cluster.Client.DeleteAllOf(context.Background(), &model.DataplaneResource{}, client.InNamespace(ns))
	})
	f := &fleet{ns: ns}
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			name := fmt.Sprintf("w-%d", i)
			dp := newDataplane(ns, name, "fleet", map[string]string{"kuma.io/service": name})
			dp.Labels = map[string]string{"app": "agent-fleet", model.NamespaceLabel: ns, model.ServiceAccountLabel: name}
			dp.Annotations = map[string]string{agent.UnixUIDAnnotation: strconv.Itoa(fleetUID + i)}
			errs <- testEnv.cluster.Client.Create(context.Background(), dp)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		for range streamsEach {
			f.workloads = append(f.workloads, &sdsclient.Workload{UID: uint32(fleetUID + i),
				SpiffeID:     fmt.Sprintf("spiffe://fleet.example.com/ns/%s/sa/w-%d", ns, i),
				RetryInitial: 100 * time.Millisecond, RetryMax: 2 * time.Second})
		}
	}
	return f
}

// run starts every client on socket until the test ends.
func (f *fleet) run(t *testing.T, socket string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, w := range f.workloads {
		w.Socket = socket
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// holding counts the clients holding a verified, unexpired SVID that
// they accepted after since.
func (f *fleet) holding(since time.Time) int {
	n := 0
	for _, w := range f.workloads {
		if h, ok := w.Current(); ok && h.Received.After(since) {
			n++
		}
	}
	return n
}

// agentProcess runs `meshcert agent` as a process of its own, as the chart's
// agent ServiceAccount, with the unix attestor.
type agentProcess struct {
	t          *testing.T
	bin        string
	dir        string
	socket     string
	kubeconfig string
	args       []string
}

func newAgentProcess(t *testing.T, args ...string) *agentProcess {
	t.Helper()
	user := applyAgentRBAC(t, config.AttestorUnix)
	bin, err := localcluster.MeshcertBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "agent") // Short: a socket path has at most 108 bytes.
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Every workload's user must reach the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a := &agentProcess{t: t, bin: bin, dir: dir, socket: filepath.Join(dir, "socket"), kubeconfig: filepath.Join(dir, "kubeconfig"), args: args}
	if err := testEnv.cluster.WriteKubeconfigAs(a.kubeconfig, user); err != nil {
		t.Fatal(err)
	}
	return a
}

// start starts the agent and waits until it is ready.
func (a *agentProcess) start() *localcluster.Process {
	a.t.Helper()
	port, err := localcluster.FreePort()
	if err != nil {
		a.t.Fatal(err)
	}
	probe := "127.0.0.1:" + strconv.Itoa(port)
	p, err := localcluster.StartBinary(a.bin, filepath.Join(a.dir, "agent.log"), "http://"+probe+"/readyz", append([]string{"agent",
		"--kubeconfig", a.kubeconfig, "--system-namespace", systemNamespace, "--node-name", agentNode, "--socket", a.socket,
		"--attestor", config.AttestorUnix, "--health-probe-bind-address", probe, "--backoff-initial", "500ms", "--backoff-max", "4s"}, a.args...)...)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { p.Kill() })
	return p
}

// TestAgentSurvivesKills SIGKILLs the agent's process at random moments
// while a fleet of workloads holds open SDS streams, two per identity, and
// go-spiffe's client watches another identity. Each agent's keys die with
// it, so each restart issues anew; the clients reconnect by themselves and
// all hold a verified SVID from the last agent; no request is left behind;
// and what a killed agent leaves open is bounded by the in-flight cap, as
// the requests of each agent are by the identities, not the streams.
func TestAgentSurvivesKills(t *testing.T) {
	ctx := context.Background()
	const ns, kills, inFlightCap = "agent-kills", 10, 20
	identities, streamsEach := 100, 2
	if *long {
		identities, streamsEach = 1000, 1
	}
	applyAgentIdentities(t)
	f := newFleet(t, ns, identities, streamsEach)
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns+"-spiffe")})
	agentWorkload(t, ns+"-spiffe", "watched", agentNode, "agent-web", map[string]string{agent.UnixUIDAnnotation: strconv.Itoa(os.Getuid())})
	fleetRequests := client.MatchingLabels{agent.NodeLabel: agentNode, model.ManagedMeshLabel: "fleet"}
	created := watchRequests(t, fleetRequests)

	a := newAgentProcess(t, "--max-requests-in-flight", strconv.Itoa(inFlightCap))
	p := a.start()
	f.run(t, a.socket)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.socket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w := &svidWatcher{}
	watchCtx, stopWatch := context.WithCancel(ctx)
	t.Cleanup(stopWatch)
	go func() { _ = c.WatchX509Context(watchCtx, w) }()

	// What each agent left: the requests open at its kill that were not
	// there, left by the one before, when it started.
	uids := func() map[types.UID]bool {
		m := map[types.UID]bool{}
		for _, cr := range listRequests(t, fleetRequests) {
			m[cr.UID] = true
		}
		return m
	}
	before, maxLeft := map[types.UID]bool{}, 0
	for i := range kills {
		// A random moment: mostly while the agent is still issuing.
		time.Sleep(time.Duration(rand.Int64N(int64(3 * time.Second))))
		p.Kill()
		after, left := uids(), 0
		for uid := range after {
			if !before[uid] {
				left++
			}
		}
		maxLeft = max(maxLeft, left)
		if left > inFlightCap {
			t.Errorf("kill %d: the agent left %d requests open, over its in-flight cap of %d", i+1, left, inFlightCap)
		}
		before = after
		p = a.start()
	}
	lastStart := time.Now()
	_, watchedBefore := w.updates()
	waitFor(t, 2*time.Minute, "every client holding an SVID of the last agent", func() bool {
		_, last := w.updates()
		return f.holding(lastStart) == len(f.workloads) && last != watchedBefore
	})
	recovered := time.Since(lastStart)
	waitFor(t, 10*time.Second, "no request left", func() bool { return len(listRequests(t, fleetRequests)) == 0 })

	n := created()
	streams := 0
	for _, w := range f.workloads {
		s, nacks, _ := w.Stats()
		streams += s
		if nacks > 0 {
			t.Errorf("a client NACKed %d responses", nacks)
		}
	}
	t.Logf("%d kills with %d identities on %d streams: every client held an SVID of the last agent %s after its start; %d streams opened; %d requests (%.1f per agent for %d identities); at most %d left open by a kill (cap %d)",
		kills, identities, len(f.workloads), recovered.Round(time.Millisecond), streams, n, float64(n)/(kills+1), identities, maxLeft, inFlightCap)
	// Each agent asks once per identity it reaches, whatever the streams
	// and their reconnects; one that was killed asked for at most all of
	// them.
	if n > (kills+1)*identities || n < identities {
		t.Errorf("%d requests for %d agents and %d identities on %d streams: want %d to %d", n, kills+1, identities, len(f.workloads), identities, (kills+1)*identities)
	}
	if streams < len(f.workloads)*2 {
		t.Errorf("%d streams opened by %d clients through %d kills: they did not reconnect", streams, len(f.workloads), kills)
	}
}

// svidWatcher records the SVIDs go-spiffe's client is pushed.
type svidWatcher struct {
	mu      sync.Mutex
	serials []string
	errs    int
}

func (w *svidWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(c.SVIDs) == 1 {
		w.serials = append(w.serials, c.SVIDs[0].Certificates[0].SerialNumber.String())
	}
}

func (w *svidWatcher) OnX509ContextWatchError(error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs++
}

func (w *svidWatcher) updates() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.serials) == 0 {
		return 0, ""
	}
	return len(w.serials), w.serials[len(w.serials)-1]
}
