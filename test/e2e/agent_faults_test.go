package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/sdsclient"
)

// fleetUID is the Unix user of the fleet's workload 0.
const fleetUID = 30000

// fleet is n workloads of mesh fleet, each the Dataplane of a Unix user of
// its own labelled app, and their Envoy-shaped SDS clients, streamsEach per
// workload.
type fleet struct {
	ns        string
	workloads []*sdsclient.Workload
}

func newFleet(t *testing.T, ns, app string, n, streamsEach int) *fleet {
	t.Helper()
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	t.Cleanup(func() {
		_ = testEnv.cluster.Client.DeleteAllOf(context.Background(), &kuma.DataplaneResource{}, client.InNamespace(ns))
	})
	f := &fleet{ns: ns}
	createInParallel(t, n, func(i int) client.Object {
		name := fmt.Sprintf("w-%d", i)
		dp := newDataplane(ns, name, "fleet", map[string]string{"kuma.io/service": name})
		dp.Labels = map[string]string{"app": app, kuma.NamespaceLabel: ns, kuma.ServiceAccountLabel: name}
		dp.Annotations = map[string]string{kuma.UnixUIDAnnotation: strconv.Itoa(fleetUID + i), kuma.NodeNameAnnotation: agentNode}
		return dp
	})
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
	dir        string
	socket     string
	kubeconfig string
	args       []string
}

func newAgentProcess(t *testing.T, args ...string) *agentProcess {
	t.Helper()
	creds := agentCredentials(t, config.AttestorUnix, agentNode)
	dir, err := os.MkdirTemp("", "agent") // Short: a socket path has at most 108 bytes.
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Every workload's user must reach the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a := &agentProcess{t: t, dir: dir, socket: filepath.Join(dir, "socket"), kubeconfig: filepath.Join(dir, "kubeconfig"), args: args}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the agents' log:\n%s", localcluster.Logs(filepath.Join(dir, "agent.log")))
		}
	})
	writeKubeconfig(t, creds, a.kubeconfig)
	return a
}

// start starts the agent and waits until it is ready.
func (a *agentProcess) start() *localcluster.Process {
	a.t.Helper()
	p, err := testEnv.cluster.StartAgentProcess(filepath.Join(a.dir, "agent.log"), a.kubeconfig, append([]string{
		"--system-namespace", systemNamespace, "--node-name", agentNode, "--socket", a.socket,
		"--attestor", config.AttestorUnix, "--backoff-initial", "500ms", "--backoff-max", "4s"}, a.args...)...)
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
	f := newFleet(t, ns, "agent-fleet", identities, streamsEach)
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns+"-spiffe")})
	agentWorkload(t, ns+"-spiffe", "watched", agentNode, "agent-web", map[string]string{kuma.UnixUIDAnnotation: strconv.Itoa(os.Getuid()), kuma.NodeNameAnnotation: agentNode})
	fleetRequests := client.MatchingLabels{agent.NodeLabel: agentNode, kuma.ManagedMeshLabel: "fleet"}
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

// TestAgentRefusesHostileCallers opens 1,000 connections at once, half of
// them asking for an identity their caller does not own or from a user
// with no Dataplane, while others send frames no gRPC client would: every
// legitimate caller is served its own verified SVID, every other one is
// refused, the agent stays up, and it asks once per identity.
func TestAgentRefusesHostileCallers(t *testing.T) {
	const ns, identities, connections = "agent-hostile", 50, 1000
	applyAgentIdentities(t)
	newFleet(t, ns, "agent-fleet", identities, 0)
	fleetRequests := client.MatchingLabels{agent.NodeLabel: agentNode, kuma.ManagedMeshLabel: "fleet"}
	created := watchRequests(t, fleetRequests)
	a := newAgentProcess(t)
	p := a.start()
	idOf := func(i int) string { return fmt.Sprintf("spiffe://fleet.example.com/ns/%s/sa/w-%d", ns, i) }

	// Malformed frames, each on a connection of its own, over and over while
	// the callers below connect.
	hostileCtx, stopHostile := context.WithCancel(context.Background())
	var hostile sync.WaitGroup
	var malformed atomic.Int64
	for _, send := range malformedFrames {
		hostile.Add(1)
		go func() {
			defer hostile.Done()
			for hostileCtx.Err() == nil {
				if err := send(a.socket); err != nil {
					t.Errorf("sending a malformed frame: %v", err)
					return
				}
				malformed.Add(1)
			}
		}()
	}

	type outcome struct {
		i    int
		code codes.Code
		err  error
	}
	results := make(chan outcome, connections)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid, asks := uint32(fleetUID+i%identities), idOf(i%identities)
			switch i % 4 {
			case 1: // another workload's identity
				asks = idOf((i + 1) % identities)
			case 3: // a user no Dataplane names
				uid = fleetUID + identities + uint32(i)
			}
			code, err := fetchOnce(a.socket, uid, asks)
			results <- outcome{i, code, err}
		}()
	}
	wg.Wait()
	close(results)
	took := time.Since(start)
	stopHostile()
	hostile.Wait()

	want := map[int]codes.Code{0: codes.OK, 1: codes.InvalidArgument, 2: codes.OK, 3: codes.PermissionDenied}
	// The callers served are the even ones, with the even identities.
	const servedIdentities = identities / 2
	served, refused := 0, 0
	for r := range results {
		if r.code != want[r.i%4] {
			t.Errorf("connection %d: %v (%v), want %v", r.i, r.code, r.err, want[r.i%4])
			continue
		}
		if r.code == codes.OK {
			served++
		} else {
			refused++
		}
	}
	if p.Exited() {
		t.Fatal("the agent died")
	}
	if code, err := fetchOnce(a.socket, fleetUID, idOf(0)); code != codes.OK {
		t.Errorf("after the hostile traffic: %v %v", code, err)
	}
	t.Logf("%d connections in %s: %d served, %d refused; %d malformed frames sent meanwhile; %d requests for %d identities",
		connections, took.Round(time.Millisecond), served, refused, malformed.Load(), created(), identities)
	// Once per identity at most, not per stream: the identities served, and
	// those of the callers that asked for another's name, which the agent
	// may have begun to issue before it refused the name and its caller left.
	if n := created(); n < servedIdentities || n > identities {
		t.Errorf("%d requests, want one for each of the %d identities served, and at most one for each of the %d", n, servedIdentities, identities)
	}
}

// fetchOnce opens an SDS stream as uid for asks and ALL, and tells how it
// went: OK once a verified SVID of asks came, or the stream's error code.
func fetchOnce(socket string, uid uint32, asks string) (codes.Code, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := &sdsclient.Workload{Socket: socket, UID: uid, SpiffeID: asks}
	conn, err := sdsclient.Conn(socket, uid)
	if err != nil {
		return codes.Unknown, err
	}
	defer conn.Close()
	_, err = w.Once(ctx, secretv3.NewSecretDiscoveryServiceClient(conn))
	return status.Code(err), err
}

// malformedFrames each open a connection to the agent's socket and send
// what no gRPC client would, then read whatever comes back until the agent
// ends the connection or a few seconds pass. Only failing to connect is an
// error: how the agent refuses is its business, as long as it stays up.
var malformedFrames = map[string]func(socket string) error{
	"garbage instead of HTTP/2": func(socket string) error {
		return rawExchange(socket, func(c net.Conn) { _, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: agent\r\n\r\n\x00\xff\xfe")) })
	},
	"a frame of a type and length no server knows": func(socket string) error {
		return rawExchange(socket, func(c net.Conn) {
			_, _ = c.Write([]byte(http2.ClientPreface))
			_, _ = c.Write([]byte{0xff, 0xff, 0xff, 0xee, 0, 0, 0, 0, 1})
		})
	},
	"a gRPC message that claims 1 GiB": func(socket string) error {
		return grpcFrame(socket, "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", []byte{0, 0x40, 0, 0, 0, 1, 2, 3})
	},
	"a DiscoveryRequest that is not protobuf": func(socket string) error {
		return grpcFrame(socket, "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", []byte{0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff})
	},
	"a compressed message with no compressor": func(socket string) error {
		return grpcFrame(socket, "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets", []byte{1, 0, 0, 0, 2, 0x1f, 0x8b})
	},
	"a method the agent does not have": func(socket string) error {
		return grpcFrame(socket, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", []byte{0, 0, 0, 0, 0})
	},
}

// rawExchange connects, lets write send, and reads until the end.
func rawExchange(socket string, write func(net.Conn)) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	write(c)
	_, _ = io.Copy(io.Discard, c)
	return nil
}

// grpcFrame sends one gRPC call's HEADERS and a DATA frame of body, after
// HTTP/2's preface and settings, as a client would but for what it sends.
func grpcFrame(socket, method string, body []byte) error {
	return rawExchange(socket, func(c net.Conn) {
		_, _ = c.Write([]byte(http2.ClientPreface))
		fr := http2.NewFramer(c, c)
		_ = fr.WriteSettings()
		var hdr bytes.Buffer
		enc := hpack.NewEncoder(&hdr)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method}, {":authority", "agent"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true})
		_ = fr.WriteData(1, true, body)
	})
}

// TestAgentWarnsBeforeIdentitiesExpire stops the signer for longer than the
// certificates have left: the agent retries with backoff, warns on the
// MeshIdentity before each certificate expires, serves nothing past the
// expiry, and once the signer is back every workload is served again.
func TestAgentWarnsBeforeIdentitiesExpire(t *testing.T) {
	const ns, identities, timeout = "agent-expiry", 5, 2 * time.Second
	applyAgentIdentities(t)
	f := newFleet(t, ns, "agent-fleet-short", identities, 1)
	a := newAgentProcess(t, "--request-timeout", timeout.String())
	a.start()
	f.run(t, a.socket)
	waitFor(t, 30*time.Second, "every workload's first SVID", func() bool { return f.holding(time.Time{}) == identities })
	expiries := map[string]time.Time{}
	last := time.Time{}
	for _, w := range f.workloads {
		h, _ := w.Current()
		expiries[w.SpiffeID] = h.Leaf.NotAfter
		last = latest(last, h.Leaf.NotAfter)
	}
	requests := watchRequests(t, client.MatchingLabels{agent.NodeLabel: agentNode, kuma.ManagedMeshLabel: "fleet"})

	restartSigner := stopSigner(t)
	stopped := time.Now()
	time.Sleep(time.Until(last.Add(3 * time.Second)))
	outage := time.Since(stopped)

	// Nothing is served past its expiry.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	conn, err := sdsclient.Conn(a.socket, fleetUID)
	if err != nil {
		t.Fatal(err)
	}
	if leaf, err := f.workloads[0].Once(ctx, secretv3.NewSecretDiscoveryServiceClient(conn)); err == nil {
		t.Errorf("served a certificate that expired at %s, %s ago", leaf.NotAfter, time.Since(leaf.NotAfter))
	}
	cancel()
	conn.Close()

	// One warning per certificate, each before its expiry.
	var list eventsv1.EventList
	if err := testEnv.cluster.Client.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	warned := map[string]time.Time{}
	for _, e := range list.Items {
		if e.Reason != "IdentityExpiring" || e.Regarding.Kind != "MeshIdentity" || e.Regarding.Name != "agent-fleet-short" {
			continue
		}
		id, _, _ := strings.Cut(e.Note, ": ")
		if _, dup := warned[id]; dup {
			t.Errorf("%s was warned of twice", id)
		}
		warned[id] = e.EventTime.Time
	}
	for id, expiry := range expiries {
		at, ok := warned[id]
		switch {
		case !ok:
			t.Errorf("no IdentityExpiring Event for %s, which expired at %s", id, expiry)
		case !at.Before(expiry):
			t.Errorf("%s was warned of at %s, not before its expiry at %s", id, at, expiry)
		default:
			t.Logf("%s: warned %s before its expiry", id, expiry.Sub(at).Round(100*time.Millisecond))
		}
	}

	// Retries: a request per identity at most every timeout, no hot loop.
	made := requests()
	if perIdentity := float64(made) / identities; perIdentity > outage.Seconds()/timeout.Seconds()+1 {
		t.Errorf("%.1f requests per identity in a %s outage with a %s timeout", perIdentity, outage, timeout)
	}
	restartSigner()
	back := time.Now()
	waitFor(t, time.Minute, "every workload served again", func() bool { return f.holding(back) == identities })
	t.Logf("signer down %s, past every certificate's expiry: %d requests for %d identities; every workload held a new SVID %s after the signer returned",
		outage.Round(100*time.Millisecond), made, identities, time.Since(back).Round(100*time.Millisecond))
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestAgentThroughAnAPIServerOutage stops kube-apiserver and etcd for 60s
// while workloads hold open streams, with their renewals falling due in the
// outage: the certificates already issued are served all along, to open
// streams and to new connections, no stream breaks, and the renewals happen
// once the API server is back.
func TestAgentThroughAnAPIServerOutage(t *testing.T) {
	const ns, identities, down = "agent-api-down", 10, 60 * time.Second
	applyAgentIdentities(t)
	f := newFleet(t, ns, "agent-fleet-3m", identities, 1)
	a := newAgentProcess(t)
	p := a.start()
	f.run(t, a.socket)
	waitFor(t, 30*time.Second, "every workload's first SVID", func() bool { return f.holding(time.Time{}) == identities })
	first := map[string]*x509.Certificate{}
	for _, w := range f.workloads {
		h, _ := w.Current()
		first[w.SpiffeID] = h.Leaf
	}
	// The renewals fall due from 70% to 80% of the 3m lifetime, 2m6s to
	// 2m24s: the outage starts 45s before them and covers them all.
	issued := first[f.workloads[0].SpiffeID].NotBefore
	time.Sleep(time.Until(issued.Add(81 * time.Second)))

	outage := make(chan error, 1)
	downAt := time.Now()
	go func() { outage <- testEnv.cluster.RestartControlPlane(down) }()
	// Mid-outage, with renewals due: served to new connections, and the open
	// streams stay up.
	time.Sleep(down * 3 / 4)
	streamsBefore := 0
	for i, w := range f.workloads {
		s, _, _ := w.Stats()
		streamsBefore += s
		if code, err := fetchOnce(a.socket, uint32(fleetUID+i), w.SpiffeID); code != codes.OK {
			t.Errorf("%s: not served with the API server down: %v %v", w.SpiffeID, code, err)
		}
	}
	if err := <-outage; err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Logf("kube-apiserver and etcd down %s, from %s after issuance, over the renewals at 2m6s to 2m24s",
		back.Sub(downAt).Round(100*time.Millisecond), downAt.Sub(issued).Round(time.Second))

	// What bounds this is the cluster coming back, not the agent: the API
	// server's RBAC cache refuses the agent for some seconds, and the
	// signer's and approver's watches back off while the API server is
	// down, as client-go's do, and take up to a minute to list again.
	waitFor(t, 2*time.Minute, "every workload renewed", func() bool {
		for _, w := range f.workloads {
			if h, ok := w.Current(); !ok || h.Leaf.SerialNumber.Cmp(first[w.SpiffeID].SerialNumber) == 0 {
				return false
			}
		}
		return true
	})
	renewedIn := time.Since(back)
	streamsAfter, lapsed := 0, time.Duration(0)
	for _, w := range f.workloads {
		s, _, _ := w.Stats()
		streamsAfter += s
		h := w.History()
		lapsed = max(lapsed, h[len(h)-1].Received.Sub(first[w.SpiffeID].NotAfter)) // 0 when renewed in time
	}
	if streamsAfter != streamsBefore || p.Exited() {
		t.Errorf("streams opened went from %d to %d (agent exited: %v): the outage broke them", streamsBefore, streamsAfter, p.Exited())
	}
	t.Logf("every workload renewed on its open stream %s after the API server returned; the longest a workload held only an expired certificate: %s",
		renewedIn.Round(100*time.Millisecond), lapsed.Round(100*time.Millisecond))
}
