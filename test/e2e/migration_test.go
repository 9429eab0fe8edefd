package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/walkthrough"
)

// The mesh, namespace and workloads of docs/migration.md.
const (
	migrationMesh = "migration"
	migrationNS   = "migration"
)

// TestMigrationGuide follows docs/migration.md as written, from a Mesh
// backend to a MeshIdentity of meshcert's agent, while two workloads, web and
// api, each on its own VM with its own agent, complete mutual TLS with each
// other without pause. Each holds what Kuma's control plane would give its
// Envoy at that moment: the backend's certificate and ca.crt while no Ready
// MeshIdentity selects it, the agent's SVID and bundles once one does. Not
// one handshake may fail, and each pairing of the two paths must be seen.
func TestMigrationGuide(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, f := range []string{"4-identity-all.yaml", "2-old-root-trust.yaml", "workloads.yaml"} {
			_, _, _ = testEnv.cluster.Kubectl(context.Background(), nil, "delete", "--ignore-not-found", "--wait=false", "-f", filepath.Join(root, "examples/migration", f))
		}
		deleteMesh(t, migrationMesh)
	})
	startReconciler(t, nil)
	workloads := []*migrationWorkload{
		{name: "web", socket: startAgentWith(t, "migration-a", config.AttestorUnix, "/proc", agentCredentials(t, config.AttestorUnix, "migration-a"))},
		{name: "api", socket: startAgentWith(t, "migration-b", config.AttestorUnix, "/proc", agentCredentials(t, config.AttestorUnix, "migration-b"))},
	}
	go markIdentitiesReady(ctx, t)
	traffic := &trafficCounts{counts: map[string]int{}}
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		runTraffic(ctx, workloads[0], workloads[1], traffic)
	}()

	bin, err := localcluster.MeshcertBinary()
	if err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	if err := os.Symlink(bin, filepath.Join(binDir, "meshcert")); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := filepath.Abs(testEnv.cluster.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := walkthrough.Steps(root, "migration")
	if err != nil {
		t.Fatal(err)
	}
	runner := walkthrough.Runner{
		Dir: root, Timeout: time.Minute,
		Env: []string{"KUBECONFIG=" + kubeconfig, "PATH=" + binDir + ":" + os.Getenv(localcluster.AssetsEnv) + ":" + os.Getenv("PATH")},
	}
	// Before each step that moves more workloads, the traffic of the step
	// before is seen, as the guide asks the reader to watch it.
	for _, phase := range []struct{ before, seen string }{
		{"4-identity-all.yaml", "web(agent) -> api(backend)"},
		{"5-after.yaml", "api(agent) -> web(agent)"},
	} {
		i := slices.IndexFunc(steps, func(s walkthrough.Step) bool { return strings.Contains(s.Command, phase.before) })
		if i < 0 {
			t.Fatalf("the guide has no step applying %s", phase.before)
		}
		runner.Run(t, steps[:i])
		steps = steps[i:]
		traffic.waitFor(t, phase.seen, 10)
	}
	runner.Run(t, steps)
	traffic.waitFor(t, "web(agent) -> api(agent)", traffic.get("web(agent) -> api(agent)")+10)
	cancel()
	<-trafficDone
	for _, w := range workloads {
		w.mu.Lock()
		if w.agent != nil {
			w.agent.Close()
		}
		w.mu.Unlock()
	}

	counts, failures := traffic.snapshot()
	t.Logf("handshakes: %v", counts)
	for _, f := range failures {
		t.Error(f)
	}
	for _, pairing := range []string{
		"web(backend) -> api(backend)", "api(backend) -> web(backend)",
		"web(agent) -> api(backend)", "api(backend) -> web(agent)",
		"web(agent) -> api(agent)", "api(agent) -> web(agent)",
	} {
		if counts[pairing] == 0 {
			t.Errorf("no handshake %s", pairing)
		}
	}
}

// markIdentitiesReady does what Kuma's control plane does for the mesh's
// MeshIdentities: it marks each Ready (Kuma 2.14 does so for a Spire identity
// once the Mesh's meshServices.mode is Exclusive, which the guide's Mesh has).
func markIdentitiesReady(ctx context.Context, t *testing.T) {
	ready := []byte(`{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Ready","message":"marked by the test, as Kuma's control plane"}]}}`)
	for ctx.Err() == nil {
		var list kuma.MeshIdentityResourceList
		if err := testEnv.cluster.Client.List(ctx, &list, client.InNamespace(systemNamespace), client.MatchingLabels{kuma.MeshLabel: migrationMesh}); err == nil {
			for i := range list.Items {
				if mid := &list.Items[i]; !strings.Contains(string(mid.Status), `"Ready"`) {
					if err := testEnv.cluster.Client.Patch(ctx, mid, client.RawPatch(types.MergePatchType, ready)); err != nil && ctx.Err() == nil {
						t.Logf("marking MeshIdentity %s Ready: %v", mid.Name, err)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// migrationWorkload is one workload of the guide, and what it holds.
type migrationWorkload struct {
	name, socket string
	// agent is its Workload API source once Kuma pointed it at the agent;
	// until the agent has served it, the workload keeps what it had, as
	// Envoy keeps its listeners until their new secrets arrive.
	mu      sync.Mutex
	agent   *workloadapi.X509Source
	waiting bool
	// agentErr is why the last fetch from the agent failed.
	agentErr error
}

func (w *migrationWorkload) backendID() spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://" + migrationMesh + "/" + w.name)
}

func (w *migrationWorkload) identityID() spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://" + migrationMesh + ".default.mesh.local/workload/" + w.name)
}

// held is a workload's certificate and the roots it trusts at one moment.
type held struct {
	path  string // "backend" or "agent"
	cert  tls.Certificate
	trust x509bundle.Source
}

// current is what the workload holds now: the agent's SVID and bundles when a
// Ready MeshIdentity selects its Dataplane and the agent has served it, else
// its Dataplane's Secret from the backend.
func (w *migrationWorkload) current(ctx context.Context) (held, error) {
	var dp kuma.DataplaneResource
	if err := testEnv.cluster.Client.Get(ctx, client.ObjectKey{Namespace: migrationNS, Name: w.name}, &dp); err != nil {
		return held{}, err
	}
	var identities kuma.MeshIdentityResourceList
	if err := testEnv.cluster.Client.List(ctx, &identities, client.InNamespace(systemNamespace)); err != nil {
		return held{}, err
	}
	mid := kuma.SelectMeshIdentity(kuma.MeshIdentityPointers(identities.Items), migrationMesh, kuma.LabelView(&dp))
	if mid != nil && strings.Contains(string(mid.Status), `"Ready"`) {
		if source := w.agentSource(ctx); source != nil {
			svid, err := source.GetX509SVID()
			if err != nil {
				return held{}, err
			}
			cert := tls.Certificate{PrivateKey: svid.PrivateKey}
			for _, c := range svid.Certificates {
				cert.Certificate = append(cert.Certificate, c.Raw)
			}
			return held{path: "agent", cert: cert, trust: source}, nil
		}
	}
	var secret corev1.Secret
	if err := testEnv.cluster.Client.Get(ctx, client.ObjectKey{Namespace: migrationNS, Name: dataplane.SecretName(w.name)}, &secret); err != nil {
		return held{}, err
	}
	cert, err := tls.X509KeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return held{}, err
	}
	roots, err := pki.DecodeX509CertificateSetBytes(secret.Data["ca.crt"])
	if err != nil {
		return held{}, err
	}
	return held{path: "backend", cert: cert, trust: backendTrust(roots)}, nil
}

// agentSource is the workload's Workload API source, or nil while the agent
// has not served it yet (the first call starts the fetch).
func (w *migrationWorkload) agentSource(ctx context.Context) *workloadapi.X509Source {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.agent == nil && !w.waiting {
		w.waiting = true
		go func() {
			source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+w.socket)))
			w.mu.Lock()
			defer w.mu.Unlock()
			w.waiting = false
			w.agent, w.agentErr = source, err
		}()
	}
	return w.agent
}

// backendTrust is the trust of a workload on the backend: its ca.crt, for
// whatever trust domain the peer's certificate names.
type backendTrust []*x509.Certificate

func (b backendTrust) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, b), nil
}

// verifyPeer verifies a peer's chain against the bundle its holder trusts
// for the peer's trust domain, and that the peer is one of ids. An X509-SVID
// is verified by go-spiffe; a certificate of the backend carries Kuma's
// kuma:// tags beside its SPIFFE ID, which go-spiffe refuses as an SVID, so
// its chain is verified with crypto/x509 against the same bundle.
func verifyPeer(trust x509bundle.Source, ids ...spiffeid.ID) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("no peer certificate")
		}
		chain := make([]*x509.Certificate, len(raw))
		for i, der := range raw {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return err
			}
			chain[i] = c
		}
		leaf := chain[0]
		if len(leaf.URIs) == 1 {
			return tlsconfig.VerifyPeerCertificate(trust, tlsconfig.AuthorizeOneOf(ids...))(raw, nil)
		}
		if len(leaf.URIs) == 0 {
			return errors.New("the peer's certificate has no URI SAN")
		}
		id, err := spiffeid.FromURI(leaf.URIs[0])
		if err != nil {
			return fmt.Errorf("the peer's first URI SAN: %w", err)
		}
		if !slices.Contains(ids, id) {
			return fmt.Errorf("unexpected peer %s", id)
		}
		bundle, err := trust.GetX509BundleForTrustDomain(id.TrustDomain())
		if err != nil {
			return err
		}
		roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
		for _, r := range bundle.X509Authorities() {
			roots.AddCert(r)
		}
		for _, c := range chain[1:] {
			intermediates.AddCert(c)
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
}

// handshake completes mutual TLS from client to server, each verifying the
// other, and exchanges one byte so that a rejection on either side shows.
func handshake(client, server held, clientIDs, serverIDs []spiffeid.ID) error {
	// Over loopback TCP, whose buffers let either side write its last
	// records (an alert, a session ticket) while the other is not reading.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	deadline := time.Now().Add(5 * time.Second)
	serverErr := make(chan error, 1)
	go func() {
		s, err := l.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		_ = s.SetDeadline(deadline)
		conn := tls.Server(s, &tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{server.cert},
			ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: verifyPeer(server.trust, clientIDs...),
		})
		defer conn.Close()
		b := make([]byte, 1)
		_, err = conn.Read(b)
		if err == nil {
			_, err = conn.Write(b)
		}
		serverErr <- err
	}()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		return err
	}
	_ = c.SetDeadline(deadline)
	conn := tls.Client(c, &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{client.cert},
		// Verified by verifyPeer instead: the peer is named by its SPIFFE ID.
		InsecureSkipVerify: true, VerifyPeerCertificate: verifyPeer(client.trust, serverIDs...),
	})
	_, err = conn.Write([]byte{1})
	if err == nil {
		_, err = conn.Read(make([]byte, 1))
	}
	conn.Close()
	if sErr := <-serverErr; sErr != nil {
		return fmt.Errorf("server: %w (client: %v)", sErr, err)
	}
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	return nil
}

// trafficCounts counts handshakes by who held what, and keeps every failure.
type trafficCounts struct {
	mu       sync.Mutex
	counts   map[string]int
	failures []string
}

func (tc *trafficCounts) get(pairing string) int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.counts[pairing]
}

// waitFor waits for n handshakes of a pairing, and fails the test with the
// counts and failures so far when they do not come.
func (tc *trafficCounts) waitFor(t *testing.T, pairing string, n int) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); tc.get(pairing) < n; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			counts, failures := tc.snapshot()
			t.Fatalf("no %d handshakes %s within a minute: handshakes %v, failures %q", n, pairing, counts, failures)
		}
	}
}

func (tc *trafficCounts) snapshot() (map[string]int, []string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	out := map[string]int{}
	for k, v := range tc.counts {
		out[k] = v
	}
	return out, slices.Clone(tc.failures)
}

// runTraffic has a and b connect to each other in turn until ctx ends. It
// starts once both hold certificates, as their applications would start
// once their sidecars are ready; from then on every failure counts.
func runTraffic(ctx context.Context, a, b *migrationWorkload, tc *trafficCounts) {
	started := false
	for ctx.Err() == nil {
		ha, errA := a.current(ctx)
		hb, errB := b.current(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case !started && (errA != nil || errB != nil):
		case errA != nil || errB != nil:
			tc.mu.Lock()
			tc.failures = append(tc.failures, fmt.Sprintf("reading what the workloads hold: %v", errors.Join(errA, errB)))
			tc.mu.Unlock()
		default:
			started = true
			for _, dir := range []struct {
				from, to       *migrationWorkload
				client, server held
			}{{a, b, ha, hb}, {b, a, hb, ha}} {
				pairing := fmt.Sprintf("%s(%s) -> %s(%s)", dir.from.name, dir.client.path, dir.to.name, dir.server.path)
				err := handshake(dir.client, dir.server, []spiffeid.ID{dir.from.backendID(), dir.from.identityID()}, []spiffeid.ID{dir.to.backendID(), dir.to.identityID()})
				tc.mu.Lock()
				if err != nil {
					tc.failures = append(tc.failures, pairing+" at "+time.Now().Format(time.RFC3339Nano)+": "+err.Error())
				} else {
					tc.counts[pairing]++
				}
				tc.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}
