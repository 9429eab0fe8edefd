package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	workloadv1 "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/chart"
)

const agentNode = "node-a"

// startAgent runs a node agent for agentNode in this process, with the
// attestor and proc root given, as the chart's agent ServiceAccount under
// exactly the chart's RBAC and with the token of an agent Pod on that node,
// and returns its socket.
func startAgent(t *testing.T, attestor, procRoot string) string {
	t.Helper()
	return startAgentWith(t, agentNode, attestor, procRoot, agentCredentials(t, attestor, agentNode))
}

// startAgentWith runs the agent of node with the credentials given.
func startAgentWith(t *testing.T, node, attestor, procRoot string, creds *rest.Config) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent") // Short: a socket path has at most 108 bytes.
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "socket")
	cfg := config.AgentConfig{NodeName: node, Socket: socket, Attestor: attestor, ProcRoot: procRoot}
	cfg.SystemNamespace, cfg.Zone = systemNamespace, "default"
	cfg.KeyAlgorithm, cfg.RequestTimeout, cfg.Workers, cfg.MaxInFlight = "ecdsa-p256", 5*time.Second, 4, 100
	cfg.BackoffInitial, cfg.BackoffMax = 500*time.Millisecond, 4*time.Second
	cfg.KubeAPIQPS, cfg.MetricsAddr, cfg.ProbeAddr = -1, "0", "0"
	cfg.MaxRequestBytes, cfg.MaxStreamsPerConnection, cfg.MaxCallsPerCaller, cfg.MaxResourceNames = 64<<10, 100, 32, 64
	cfg.MaxConnections, cfg.MaxConnectionsPerCaller = 2048, 64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.RunAgent(ctx, cfg, creds, localcluster.InOneProcess) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the agent stopped with %v", err)
		}
	})
	waitFor(t, 30*time.Second, "the agent's socket", func() bool {
		_, err := os.Stat(socket)
		return err == nil
	})
	return socket
}

// The chart's release of the agents of the tests, whose ServiceAccount
// meshcert approves by node (agentUser).
const (
	agentRelease = "agents"
	agentAccount = agentRelease + "-meshcert-agent"
	agentUser    = "system:serviceaccount:" + chart.Namespace + ":" + agentAccount
)

// applyAgentRBAC applies the chart's ServiceAccount and RBAC of the agent,
// and the policy that keeps its deletes to its own node's requests.
func applyAgentRBAC(t *testing.T, attestor string) {
	t.Helper()
	manifests, err := chart.RenderRelease(agentRelease, "--set", "agent.enabled=true", "--set", "agent.attestor="+attestor)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
	for _, obj := range manifests {
		if !strings.Contains(obj.GetName(), "-agent") || !slices.Contains(kinds, obj.GetKind()) {
			continue
		}
		if err := testEnv.cluster.Client.Patch(context.Background(), obj, client.Apply, client.FieldOwner("helm"), client.ForceOwnership); err != nil {
			t.Fatalf("the API server refused %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		t.Cleanup(func() { _ = testEnv.cluster.Client.Delete(context.Background(), obj) })
	}
}

// agentCredentials applies the agent's RBAC and returns what the kubelet
// gives an agent's Pod on node: a token of the agent's ServiceAccount bound
// to that Pod, which names the node to whom it authenticates.
func agentCredentials(t *testing.T, attestor, node string) *rest.Config {
	t.Helper()
	applyAgentRBAC(t, attestor)
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: chart.Namespace, Name: agentAccount + "-" + node},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: agentAccount,
			Containers: []corev1.Container{{Name: "agent", Image: "meshcert"}}},
	}
	if err := testEnv.cluster.Client.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := testEnv.cluster.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
		t.Fatal(err)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
		ExpirationSeconds: ptr.To[int64](3600),
	}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: chart.Namespace, Name: agentAccount}}
	if err := testEnv.cluster.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("requesting the agent Pod's token: %v", err)
	}
	return &rest.Config{Host: testEnv.cluster.Config.Host, BearerToken: tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: testEnv.cluster.Config.CAData}}
}

// writeKubeconfig writes creds as a kubeconfig at path.
func writeKubeconfig(t *testing.T, creds *rest.Config, path string) {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: creds.Host, CertificateAuthorityData: creds.CAData}
	kc.AuthInfos["agent"] = &clientcmdapi.AuthInfo{Token: creds.BearerToken}
	kc.Contexts["agent"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "agent"}
	kc.CurrentContext = "agent"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

func dialAgent(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// fakeProc is a proc folder for this test process's PID, as the node's
// /proc would show it for a process of a pod; its stat and status are the
// real ones, so the start time and credential checks stay real, as the peer
// credentials do.
type fakeProc struct {
	root string
	dir  string
}

func newFakeProc(t *testing.T) *fakeProc {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"stat", "status"} {
		b, err := os.ReadFile("/proc/self/" + file)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &fakeProc{root: root, dir: dir}
}

// fakeContainerID is the container of every pod agentWorkload makes, as its
// status and fakeProc's cgroup name it.
var fakeContainerID = strings.Repeat("ab", 32)

// inPod makes the process's cgroup that of the pod's container, as
// containerd with the systemd driver on cgroup v2 writes it; "" makes it a
// host process.
func (p *fakeProc) inPod(t *testing.T, podUID string) {
	t.Helper()
	line := "0::/system.slice/kubelet.service\n"
	if podUID != "" {
		line = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(podUID, "-", "_") +
			".slice/cri-containerd-" + fakeContainerID + ".scope\n"
	}
	if err := os.WriteFile(filepath.Join(p.dir, "cgroup"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

// agentWorkload creates a Pod on node, running as service account name, its
// container fakeContainerID, and the Dataplane Kuma would make for it, in
// mesh agents: controlled by the Pod, naming its namespace and service
// account.
func agentWorkload(t *testing.T, ns, name, node, app string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: name, Containers: []corev1.Container{{Name: "app", Image: "example"}}},
	}
	createObject(t, pod)
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: "example", ContainerID: "containerd://" + fakeContainerID}}
	if err := testEnv.cluster.Client.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	dp := newDataplane(ns, name, "agents", map[string]string{"kuma.io/service": name})
	dp.Labels = map[string]string{"app": app, kuma.NamespaceLabel: ns, kuma.ServiceAccountLabel: name, "kuma.io/mesh": "agents"}
	dp.Annotations = annotations
	dp.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
	createObject(t, dp)
	return pod
}

func applyAgentIdentities(t *testing.T) {
	t.Helper()
	if _, stderr, err := kubectlIn(context.Background(), nil, "apply", "-f", "agent/identities.yaml"); err != nil {
		t.Fatalf("applying the identities: %v: %s", err, stderr)
	}
	t.Cleanup(func() {
		_, _, _ = kubectlIn(context.Background(), nil, "delete", "-f", "agent/identities.yaml")
		_, _, _ = kubectlIn(context.Background(), nil, "delete", "--ignore-not-found", "-f", "agent/builtin-trust.yaml")
	})
}

// TestAgentServesPodsOverSDSAndTheWorkloadAPI runs the node agent with the
// Kubernetes attestor, and drives it with clients meshcert did not write:
// go-spiffe's Workload API client, and an SDS client on go-control-plane's
// stubs that follows Envoy's protocol.
func TestAgentServesPodsOverSDSAndTheWorkloadAPI(t *testing.T) {
	ctx := context.Background()
	const ns = "agent-pods"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	applyAgentIdentities(t)
	web := agentWorkload(t, ns, "web", agentNode, "agent-web", nil)
	elsewhere := agentWorkload(t, ns, "elsewhere", "node-b", "agent-web", nil)
	denied := agentWorkload(t, ns, "denied", agentNode, "agent-denied", nil)
	proc := newFakeProc(t)
	proc.inPod(t, string(web.UID))
	socket := startAgent(t, config.AttestorKubernetes, proc.root)
	const webID = "spiffe://agents.example.com/ns/agent-pods/sa/web"

	t.Run("go-spiffe's client gets the pod's SVID, chaining to its bundle", func(t *testing.T) {
		fetchCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		x509ctx, err := workloadapi.FetchX509Context(fetchCtx, workloadapi.WithAddr("unix://"+socket))
		if err != nil {
			t.Fatal(err)
		}
		if len(x509ctx.SVIDs) != 1 || x509ctx.SVIDs[0].ID.String() != webID {
			t.Fatalf("SVIDs %v, want one for %s", x509ctx.SVIDs, webID)
		}
		svid := x509ctx.SVIDs[0]
		if _, _, err := x509svid.Verify(svid.Certificates, x509ctx.Bundles); err != nil {
			t.Errorf("the SVID does not verify against the bundle: %v", err)
		}
		if ok, _ := pki.PublicKeyMatchesCertificate(svid.PrivateKey.Public(), svid.Certificates[0]); !ok {
			t.Error("the key is not the SVID's")
		}
		leaf := svid.Certificates[0]
		if len(leaf.URIs) != 1 || leaf.IsCA || leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&x509.KeyUsageKeyEncipherment != 0 {
			t.Errorf("not an X509-SVID of an ECDSA key: URIs %v, CA %v, key usage %v", leaf.URIs, leaf.IsCA, leaf.KeyUsage)
		}
		if !issuedBy(leaf, testEnv.ca.Cert) {
			t.Error("the SVID is not signed by mesh-ca")
		}
		if d := leaf.NotAfter.Sub(leaf.NotBefore); d > 16*time.Second {
			t.Errorf("lifetime %s, want the MeshIdentity's 15s", d)
		}
	})

	t.Run("the requests are this node's, and deleted once used", func(t *testing.T) {
		waitFor(t, 10*time.Second, "no request left", func() bool {
			return len(listRequests(t, client.MatchingLabels{agent.NodeLabel: agentNode, kuma.ManagedMeshLabel: "agents"})) == 0
		})
	})

	t.Run("SDS, as Envoy speaks it", func(t *testing.T) {
		stream, err := secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket)).StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		node := &corev3.Node{Id: "web", UserAgentName: "envoy"}
		send := func(req *discoveryv3.DiscoveryRequest) {
			t.Helper()
			req.Node, req.TypeUrl = node, agent.SecretTypeURL
			if err := stream.Send(req); err != nil {
				t.Fatal(err)
			}
		}
		// One reader for the stream's life: a response not waited for is
		// kept for the next wait, as Envoy would read it.
		responses := make(chan *discoveryv3.DiscoveryResponse, 16)
		streamErr := make(chan error, 1)
		go func() {
			for {
				r, err := stream.Recv()
				if err != nil {
					streamErr <- err
					close(responses)
					return
				}
				responses <- r
			}
		}()
		recv := func(within time.Duration) *discoveryv3.DiscoveryResponse {
			t.Helper()
			select {
			case r := <-responses:
				return r
			case <-time.After(within):
				return nil
			}
		}

		send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}})
		first := recv(20 * time.Second)
		if first == nil || first.VersionInfo == "" || first.Nonce == "" || len(first.Resources) != 1 {
			t.Fatalf("first response %v", first)
		}
		tlsCert := sdsSecret(t, first, 0).GetTlsCertificate()
		chain, err := pki.DecodeX509CertificateChainBytes(tlsCert.GetCertificateChain().GetInlineBytes())
		if err != nil || chain[0].URIs[0].String() != webID || !issuedBy(chain[0], testEnv.ca.Cert) {
			t.Errorf("tls_certificate chain %v, %v", chain, err)
		}
		key, err := pki.DecodePrivateKeyBytes(tlsCert.GetPrivateKey().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := pki.PublicKeyMatchesCertificate(key.Public(), chain[0]); !ok {
			t.Error("the key is not the certificate's")
		}

		// ACK: nothing more until something changes.
		send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}, VersionInfo: first.VersionInfo, ResponseNonce: first.Nonce})
		next := recv(500 * time.Millisecond)
		if next != nil && next.VersionInfo == first.VersionInfo {
			t.Errorf("an ACK was answered with the same version: %v", next)
		}

		// A stale nonce is ignored, whatever it asks.
		if next == nil {
			send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID, "ROOTCA"}, VersionInfo: first.VersionInfo, ResponseNonce: "stale"})
			if r := recv(500 * time.Millisecond); r != nil {
				t.Errorf("a request with a stale nonce was answered: %v", r)
			}
		}
		last := first
		if next != nil {
			last = next // A renewal came in between.
		}

		// New names are answered at once; ALL is a SPIFFE validator.
		send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID, agent.AllBundlesName}, VersionInfo: last.VersionInfo, ResponseNonce: last.Nonce})
		both := recv(2 * time.Second)
		if both == nil || len(both.Resources) != 2 || both.VersionInfo == last.VersionInfo {
			t.Fatalf("the change of names got %v", both)
		}
		if got := trustDomainsOf(t, sdsSecret(t, both, 1)); strings.Join(got, ",") != "agents.example.com" {
			t.Errorf("ALL holds trust domains %v, want agents.example.com", got)
		}

		// A NACK is logged, and changes nothing.
		send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID, agent.AllBundlesName}, VersionInfo: last.VersionInfo, ResponseNonce: both.Nonce,
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test NACK"}})

		// Another trust domain of the mesh is pushed into ALL.
		if _, stderr, err := kubectlIn(ctx, nil, "apply", "-f", "agent/builtin-trust.yaml"); err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		var pushed *discoveryv3.DiscoveryResponse
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			r := recv(time.Until(deadline))
			if r == nil {
				break
			}
			send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID, agent.AllBundlesName}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
			if len(trustDomainsOf(t, sdsSecret(t, r, 1))) == 2 {
				pushed = r
				break
			}
		}
		if pushed == nil {
			t.Fatal("the new MeshTrust was not pushed")
		}
		if got := trustDomainsOf(t, sdsSecret(t, pushed, 1)); strings.Join(got, ",") != "agents.example.com,builtin.agents.example.com" {
			t.Errorf("ALL holds %v after the MeshTrust, want both trust domains, sorted", got)
		}

		// A renewal is pushed on the open stream, before the old one expires.
		oldLeaf := chain[0]
		var renewed *x509.Certificate
		deadline = oldLeaf.NotAfter
		for time.Now().Before(deadline) && renewed == nil {
			r := recv(time.Until(deadline))
			if r == nil {
				break
			}
			send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID, agent.AllBundlesName}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
			c, err := pki.DecodeX509CertificateChainBytes(sdsSecret(t, r, 0).GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			if err == nil && c[0].SerialNumber.Cmp(oldLeaf.SerialNumber) != 0 {
				renewed = c[0]
			}
		}
		if renewed == nil {
			t.Fatalf("no renewal was pushed before the certificate expired at %s", oldLeaf.NotAfter)
		}
		t.Logf("renewed %s before its expiry", oldLeaf.NotAfter.Sub(time.Now()).Round(time.Second))

		// A name the workload is not entitled to ends the stream.
		send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"spiffe://agents.example.com/ns/agent-pods/sa/elsewhere"}})
		for range responses {
		}
		if err := <-streamErr; status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spiffe://agents.example.com/ns/agent-pods/sa/elsewhere") {
			t.Errorf("another's identity: %v, want InvalidArgument naming it", err)
		}
	})

	t.Run("the Workload API refuses a call without its security header, and JWTs", func(t *testing.T) {
		c := workloadv1.NewSpiffeWorkloadAPIClient(dialAgent(t, socket))
		s, err := c.FetchX509SVID(ctx, &workloadv1.X509SVIDRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "security header") {
			t.Errorf("without the header: %v, want InvalidArgument", err)
		}
		withHeader := metadata.AppendToOutgoingContext(ctx, agent.SecurityHeader, "true")
		if _, err := c.FetchJWTSVID(withHeader, &workloadv1.JWTSVIDRequest{Audience: []string{"x"}}); status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "X.509 SVIDs only") {
			t.Errorf("FetchJWTSVID: %v, want Unimplemented saying so", err)
		}
		delta, err := secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket)).DeltaSecrets(ctx)
		if err == nil {
			_, err = delta.Recv() // A stream's error comes with its first receive.
		}
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("DeltaSecrets: %v, want Unimplemented", err)
		}
	})

	t.Run("a pod of another node, and a host process, get nothing", func(t *testing.T) {
		for name, podUID := range map[string]string{"another node's pod": string(elsewhere.UID), "a host process": ""} {
			proc.inPod(t, podUID)
			fetchCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := workloadapi.FetchX509Context(fetchCtx, workloadapi.WithAddr("unix://"+socket))
			cancel()
			if err == nil {
				t.Errorf("%s got an identity", name)
			}
			_, err = secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket)).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s: FetchSecrets %v, want PermissionDenied", name, err)
			}
		}
	})

	t.Run("a denied request is Events, and no certificate", func(t *testing.T) {
		proc.inPod(t, string(denied.UID))
		// The caller waits until the denial's Events are there: an agent
		// gives up an identity no caller waits for, and on a loaded machine
		// approver-policy's denial can take seconds.
		fetchCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		fetched := make(chan error, 1)
		go func() {
			_, err := secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket)).FetchSecrets(fetchCtx,
				&discoveryv3.DiscoveryRequest{ResourceNames: []string{"spiffe://agents.example.com/ns/agent-pods/sa/denied"}})
			fetched <- err
		}()
		waitFor(t, 30*time.Second, "Denied Events on the MeshIdentity and the Pod", func() bool {
			return len(eventsFor(t, "MeshIdentity", "agent-denied")["Denied"]) > 0 && len(eventsFor(t, "Pod", "denied")["Denied"]) > 0
		})
		cancel()
		if err := <-fetched; err == nil {
			t.Error("a denied identity was served")
		}
		if notes := eventsFor(t, "Pod", "denied")["Denied"]; !strings.Contains(notes[0], "no policy allows requests for denied-ca") {
			t.Errorf("the Pod's Event %q lacks the policy's message", notes[0])
		}
	})
}

func sdsSecret(t *testing.T, r *discoveryv3.DiscoveryResponse, i int) *tlsv3.Secret {
	t.Helper()
	if i >= len(r.Resources) {
		t.Fatalf("response %s has %d resources, want at least %d", r.VersionInfo, len(r.Resources), i+1)
	}
	s := &tlsv3.Secret{}
	if err := r.Resources[i].UnmarshalTo(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// trustDomainsOf reads the SPIFFE validator of an ALL secret.
func trustDomainsOf(t *testing.T, s *tlsv3.Secret) []string {
	t.Helper()
	v := s.GetValidationContext().GetCustomValidatorConfig()
	if v.GetName() != agent.SPIFFEValidatorKey {
		t.Fatalf("secret %s: validator %q, want %s", s.Name, v.GetName(), agent.SPIFFEValidatorKey)
	}
	conf := &tlsv3.SPIFFECertValidatorConfig{}
	if err := v.GetTypedConfig().UnmarshalTo(conf); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, td := range conf.TrustDomains {
		if b, _ := pem.Decode(td.GetTrustBundle().GetInlineBytes()); b == nil {
			t.Errorf("trust domain %s has no PEM roots", td.Name)
		}
		out = append(out, td.Name)
	}
	return out
}
