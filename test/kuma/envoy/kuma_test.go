package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/test/output"
)

// kumaVersion is the Kuma whose kuma-cp and kuma-dp the test runs.
const kumaVersion = "2.14.3"

// trustDomain is the one Kuma's Spire provider derives for mesh default
// in zone default with the MeshIdentity's default template.
const trustDomain = "default.default.mesh.local"

// TestKumaDataplanes runs Kuma's kuma-cp (universal, in memory) with a Mesh
// whose MeshIdentity is of type Spire, and two kuma-dp with this stand-in
// as their Envoy: web, with an outbound to backend. Each stand-in must
// receive CDS and LDS from kuma-cp and ACK them, fetch from the socket
// kuma-cp configured exactly the secret names kuma-cp configured, report
// ready through kuma-dp, and complete mutual TLS with the other.
func TestKumaDataplanes(t *testing.T) {
	bin := kumaBinaries(t)
	envoy := filepath.Join(t.TempDir(), "envoy")
	if out, err := exec.Command("go", "build", "-o", envoy, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the stand-in: %v\n%s", err, out)
	}
	// A short directory: Unix socket paths are limited to 108 bytes.
	sockets, err := os.MkdirTemp("", "kuma")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockets) })
	spireSocket := filepath.Join(sockets, "spire.sock")
	spire := startSpire(t, spireSocket)

	ports := freePorts(t, 11)
	work := t.TempDir()
	cp := map[string]string{
		"KUMA_MODE": "zone", "KUMA_ENVIRONMENT": "universal", "KUMA_STORE_TYPE": "memory",
		"KUMA_GENERAL_WORK_DIR":                    work,
		"KUMA_DP_SERVER_PORT":                      ports[0],
		"KUMA_DIAGNOSTICS_SERVER_PORT":             ports[1],
		"KUMA_API_SERVER_HTTP_PORT":                ports[2],
		"KUMA_API_SERVER_HTTPS_PORT":               ports[3],
		"KUMA_INTER_CP_SERVER_PORT":                ports[4],
		"KUMA_MONITORING_ASSIGNMENT_SERVER_PORT":   ports[5],
		"KUMA_API_SERVER_HTTP_INTERFACE":           "127.0.0.1",
		"KUMA_API_SERVER_HTTPS_INTERFACE":          "127.0.0.1",
		"KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE":       "none",
		"KUMA_REPORTS_ENABLED":                     "false",
		"KUMA_API_SERVER_GUI_ENABLED":              "false",
		"KUMA_RUNTIME_UNIVERSAL_SPIRE_SOCKET_PATH": spireSocket,
	}
	start(t, "kuma-cp", cp, filepath.Join(bin, "kuma-cp"), "run")
	api := "http://127.0.0.1:" + ports[2]
	eventually(t, 60*time.Second, "kuma-cp ready", func() error { return get("http://127.0.0.1:" + ports[1] + "/ready") })
	put(t, api+"/meshes/default", `{"type":"Mesh","name":"default","meshServices":{"mode":"Exclusive"}}`)
	put(t, api+"/meshes/default/meshidentities/spire", `{"type":"MeshIdentity","mesh":"default","name":"spire","spec":{"selector":{"dataplane":{"matchLabels":{}}},"provider":{"type":"Spire","spire":{}}}}`)

	backendPort, webPort := ports[6], ports[7]
	dataplanes := map[string]string{
		"backend": fmt.Sprintf(`{"type":"Dataplane","mesh":"default","name":"backend-1","labels":{"kuma.io/workload":"backend"},
			"networking":{"address":"127.0.0.1","inbound":[{"port":%s,"servicePort":1,"tags":{"kuma.io/service":"backend","kuma.io/protocol":"tcp"}}]}}`, backendPort),
		"web": fmt.Sprintf(`{"type":"Dataplane","mesh":"default","name":"web-1","labels":{"kuma.io/workload":"web"},
			"networking":{"address":"127.0.0.1","inbound":[{"port":%s,"servicePort":1,"tags":{"kuma.io/service":"web","kuma.io/protocol":"tcp"}}],
			"outbound":[{"port":%s,"backendRef":{"kind":"MeshService","name":"backend","port":%s}}]}}`, webPort, ports[8], backendPort),
	}
	logs := map[string]string{}
	readiness := map[string]string{"backend": ports[9], "web": ports[10]}
	for name, dp := range dataplanes {
		dir := t.TempDir()
		logs[name] = filepath.Join(dir, "envoy.jsonl")
		env := map[string]string{
			"KUMA_READINESS_PORT":                    readiness[name],
			"KUMA_DATAPLANE_RUNTIME_SPIRE_SUPPORTED": "true",
			"MESHCERT_ENVOY_LOG":                     logs[name],
			"MESHCERT_ENVOY_DIAL_INTERVAL":           "500ms",
		}
		start(t, "kuma-dp "+name, env, filepath.Join(bin, "kuma-dp"), "run",
			"--cp-address=https://127.0.0.1:"+ports[0], "--ca-cert-file="+filepath.Join(work, "kuma-cp.crt"),
			"--dataplane="+dp, "--binary-path="+envoy, "--dns-enabled=false", "--drain-time=1s", "--work-dir="+filepath.Join(dir, "work"))
	}

	want := map[string]string{"backend": "spiffe://" + trustDomain + "/workload/backend", "web": "spiffe://" + trustDomain + "/workload/web"}
	for name, log := range logs {
		eventually(t, 90*time.Second, name+" ACKs CDS and LDS and is ready", func() error {
			events := readLog(t, log)
			for _, typeURL := range []string{clusterType, listenerType} {
				if !acked(events, typeURL) {
					return fmt.Errorf("no ACK of a %s response yet", typeURL)
				}
			}
			return get("http://127.0.0.1:" + readiness[name] + "/ready")
		})
	}
	eventually(t, 60*time.Second, "web and backend complete mutual TLS", func() error {
		if err := handshook(readLog(t, logs["web"]), "outbound handshake", want["backend"]); err != nil {
			return fmt.Errorf("web: %w", err)
		}
		if err := handshook(readLog(t, logs["backend"]), "inbound handshake", want["web"]); err != nil {
			return fmt.Errorf("backend: %w", err)
		}
		return nil
	})
	for name, log := range logs {
		var asked []string
		for _, e := range readLog(t, log) {
			if e["msg"] == "sds request" {
				if e["socket"] != spireSocket || e["sdsCluster"] != "system_identity_sds-spire-agent" {
					t.Errorf("%s asked %v of socket %v, not %s of system_identity_sds-spire-agent", name, e["name"], e["socket"], spireSocket)
				}
				if name := e["name"].(string); !slices.Contains(asked, name) {
					asked = append(asked, name)
				}
			}
		}
		if wanted := []string{want[name], agent.AllBundlesName}; !sameSet(asked, wanted) {
			t.Errorf("%s asked SDS for %v, want %v", name, asked, wanted)
		}
	}
	if got := spire.userAgents(); len(got) == 0 || got[0] != "envoy 1.38.2" {
		t.Errorf("the SDS server saw user agents %v, want Envoy's", got)
	}
}

// kumaBinaries is the folder of kuma-cp, kuma-dp, kumactl and Kuma's chart
// that hack/kuma.sh finds ($KUMA_DIR, ../shared/kuma beside the repository,
// its cache, or Kuma's release), unpacked outside the checkout.
func kumaBinaries(t *testing.T) string {
	t.Helper()
	mod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(filepath.Dir(strings.TrimSpace(string(mod))), "hack", "kuma.sh")
	var stderr bytes.Buffer
	cmd := exec.Command(script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("no Kuma %s: %v: %s\nset KUMA_DIR to Kuma's unpacked release (kuma-%s/), or put ../shared/kuma beside the repository", kumaVersion, err, stderr.String(), kumaVersion)
	}
	return strings.TrimSpace(string(out))
}

// start runs a process until the test ends, then stops it with SIGTERM.
// Its output goes to the test's log when the test fails.
func start(t *testing.T, name string, env map[string]string, path string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out := &output.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", name, out.String())
		}
	})
}

// freePorts are ports of loopback that were free a moment ago.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var ports []string
	var listeners []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, l)
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	for _, l := range listeners {
		l.Close()
	}
	return ports
}

func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func get(u string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s %s", u, resp.Status, body)
	}
	return nil
}

func put(t *testing.T, u, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		out, _ := io.ReadAll(resp.Body)
		t.Fatalf("PUT %s: %s %s", u, resp.Status, out)
	}
}

// readLog reads the stand-in's JSON lines.
func readLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var events []map[string]any
	lines := bufio.NewScanner(f)
	lines.Buffer(nil, 1<<20)
	for lines.Scan() {
		e := map[string]any{}
		if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
			t.Fatalf("%s: %v: %s", path, err, lines.Bytes())
		}
		events = append(events, e)
	}
	return events
}

// acked tells whether a response of typeURL was ACKed with its own
// version and nonce.
func acked(events []map[string]any, typeURL string) bool {
	responses := map[string]any{}
	for _, e := range events {
		if e["typeUrl"] != typeURL {
			continue
		}
		switch e["msg"] {
		case "xds response":
			responses[e["nonce"].(string)] = e["versionInfo"]
		case "xds ack":
			if v, ok := responses[e["responseNonce"].(string)]; ok && v == e["versionInfo"] {
				return true
			}
		}
	}
	return false
}

// handshook tells whether a handshake of kind succeeded with the peer id.
func handshook(events []map[string]any, kind, peer string) error {
	var last any
	for _, e := range events {
		if e["msg"] != kind {
			continue
		}
		if e["ok"] == true && e["peerSpiffeId"] == peer {
			return nil
		}
		last = e
	}
	return fmt.Errorf("no successful %s with %s; last: %v", kind, peer, last)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// fakeSpire stands in for SPIRE's agent on the socket kuma-cp configured:
// it serves over SDS a certificate for any SPIFFE ID of trustDomain and,
// as ALL, that trust domain's root with the SPIFFE validator. It attests
// nothing: what this test checks is the names asked, not who asked.
type fakeSpire struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey

	mu     sync.Mutex
	agents []string
}

func startSpire(t *testing.T, socket string) *fakeSpire {
	t.Helper()
	s := newFakeSpire(t)
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(srv, s)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return s
}

// newFakeSpire makes a fake SPIRE agent with a CA of its own.
func newFakeSpire(t *testing.T) *fakeSpire {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake spire"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{{Scheme: "spiffe", Host: trustDomain}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &fakeSpire{ca: ca, caKey: key}
}

func (s *fakeSpire) userAgents() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.agents...)
}

// StreamSecrets answers a stream's first request and takes its ACKs.
func (s *fakeSpire) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	v := req.GetNode().GetUserAgentBuildVersion().GetVersion()
	s.mu.Lock()
	s.agents = append(s.agents, fmt.Sprintf("%s %d.%d.%d", req.GetNode().GetUserAgentName(), v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch()))
	s.mu.Unlock()
	var resources []*anypb.Any
	for _, name := range req.ResourceNames {
		secret, err := s.secret(name)
		if err != nil {
			return err
		}
		a, err := anypb.New(secret)
		if err != nil {
			return err
		}
		resources = append(resources, a)
	}
	if err := stream.Send(&discoveryv3.DiscoveryResponse{VersionInfo: "1", Nonce: "1", TypeUrl: agent.SecretTypeURL, Resources: resources}); err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

func (s *fakeSpire) secret(name string) (*tlsv3.Secret, error) {
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Raw})
	if name == agent.AllBundlesName {
		conf, err := anypb.New(&tlsv3.SPIFFECertValidatorConfig{TrustDomains: []*tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			{Name: trustDomain, TrustBundle: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: caPEM}}},
		}})
		if err != nil {
			return nil, err
		}
		return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: conf},
		}}}, nil
	}
	id, err := url.Parse(name)
	if err != nil || id.Scheme != "spiffe" || id.Host != trustDomain {
		return nil, fmt.Errorf("no identity %q here", name)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{id},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, &key.PublicKey, s.caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}},
	}}}, nil
}
