package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/test/harness"
	"github.com/meshcert/meshcert/webhook"
)

// long runs the reliability tests at full size; `make test-long` sets it.
var long = flag.Bool("long", false, "run the reliability tests at full size (5,000 dataplanes, 50 kills)")

// reconcilerArgs are the flags of a meshcert process that only reconciles,
// with the tests' short timeouts.
func reconcilerArgs(namespace string, extra ...string) []string {
	return append([]string{
		"--enable-webhook=false",
		"--system-namespace=" + systemNamespace,
		"--dataplane-namespaces=" + namespace,
		"--metrics-bind-address=0",
		"--request-timeout=5s",
		"--backoff-initial=500ms",
		"--backoff-max=4s",
	}, extra...)
}

// createDataplanes creates n dataplanes web-0..web-(n-1), a few at a time.
func createDataplanes(t *testing.T, ns, mesh string, from, n int) {
	t.Helper()
	createInParallel(t, n, func(i int) client.Object {
		return newDataplane(ns, fmt.Sprintf("web-%d", from+i), mesh, map[string]string{"kuma.io/service": fmt.Sprintf("web-%d", (from+i)%50)})
	})
}

// createInParallel creates object(0)..object(n-1), 16 at a time.
func createInParallel(t *testing.T, n int, object func(i int) client.Object) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs <- testEnv.cluster.Client.Create(context.Background(), object(i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// cleanupNamespace deletes the dataplanes and Secrets of a test namespace.
func cleanupNamespace(t *testing.T, ns string) {
	t.Cleanup(func() {
		ctx := context.Background()
		_ = testEnv.cluster.Client.DeleteAllOf(ctx, &kuma.DataplaneResource{}, client.InNamespace(ns))
		_ = testEnv.cluster.Client.DeleteAllOf(ctx, &corev1.Secret{}, client.InNamespace(ns))
	})
}

// validSecrets counts the dataplane Secrets of a namespace that are complete
// and sound: a key that matches, a certificate from ca, for its dataplane.
func validSecrets(t *testing.T, ns string, ca *x509.Certificate) (valid int, problems []string) {
	t.Helper()
	var list corev1.SecretList
	if err := testEnv.cluster.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
		if err != nil {
			problems = append(problems, s.Name+": "+err.Error())
			continue
		}
		key, err := pki.DecodePrivateKeyBytes(s.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			problems = append(problems, s.Name+": "+err.Error())
			continue
		}
		if ok, _ := pki.PublicKeyMatchesCertificate(key.Public(), chain[0]); !ok {
			problems = append(problems, s.Name+": tls.key does not match tls.crt")
			continue
		}
		if !issuedBy(chain[0], ca) {
			problems = append(problems, s.Name+": not from the mesh's CA")
			continue
		}
		if s.Name != s.Annotations[kuma.DataplaneNameAnnotation]+"-mtls" {
			problems = append(problems, s.Name+": not named for its dataplane")
			continue
		}
		valid++
	}
	return valid, problems
}

// TestCrashDuringIssuance kills the reconciler, as a crash would, at random
// moments while it issues for 1,000 dataplanes, and restarts it each time.
// Once it settles, every dataplane holds a sound certificate, no request is
// left over, and no Secret is duplicated.
func TestCrashDuringIssuance(t *testing.T) {
	n, kills := 1000, 10
	if *long {
		n, kills = 5000, 50
	}
	const ns, mesh = "crash", "crash"
	meshInNamespace(t, ns, mesh, certManagerMesh(mesh, "ClusterIssuer", "mesh-ca", "", ""))
	cleanupNamespace(t, ns)
	createDataplanes(t, ns, mesh, 0, n)

	logPath := filepath.Join(t.TempDir(), "meshcert.log")
	start := time.Now()
	for i := range kills {
		p, err := testEnv.cluster.StartProcess(logPath, reconcilerArgs(ns)...)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(200+rand.IntN(1800)) * time.Millisecond)
		p.Kill()
		valid, _ := validSecrets(t, ns, testEnv.ca.Cert)
		t.Logf("kill %d: %d of %d dataplanes served", i+1, valid, n)
	}
	p, err := testEnv.cluster.StartProcess(logPath, reconcilerArgs(ns, "--log-level=5")...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	settle := time.Now()
	waitFor(t, 5*time.Minute, fmt.Sprintf("%d sound certificates", n), func() bool {
		valid, _ := validSecrets(t, ns, testEnv.ca.Cert)
		return valid == n
	})
	t.Logf("%d kills survived; after the last restart, %d dataplanes settled in %s (%s in all)",
		kills, n, time.Since(settle).Round(time.Second), time.Since(start).Round(time.Second))
	waitFor(t, 30*time.Second, "no CertificateRequest left", func() bool {
		return len(listRequests(t, client.MatchingLabels{kuma.ManagedMeshLabel: mesh})) == 0
	})
	var list corev1.SecretList
	if err := testEnv.cluster.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != n {
		t.Errorf("%d Secrets for %d dataplanes", len(list.Items), n)
	}
	if _, problems := validSecrets(t, ns, testEnv.ca.Cert); len(problems) > 0 {
		t.Errorf("unsound Secrets: %v", problems[:min(10, len(problems))])
	}
	if logs := localcluster.Logs(logPath); strings.Contains(logs, "PRIVATE KEY") {
		t.Error("a private key reached the logs")
	}
}

// TestSignerOutage stops cert-manager's CA signer for a minute while
// dataplanes are added: requests time out and back off, without a hot loop,
// and the backlog drains once the signer is back.
func TestSignerOutage(t *testing.T) {
	outage := 60 * time.Second
	const ns, mesh, n = "outage", "outage", 20
	startReconciler(t, nil)
	meshInNamespace(t, ns, mesh, certManagerMesh(mesh, "Issuer", "mesh-ca", "", ""))
	cleanupNamespace(t, ns)
	requests := watchRequests(t, client.MatchingLabels{kuma.ManagedMeshLabel: mesh})

	restartSigner := stopSigner(t)
	stopped := time.Now()
	for i := range n {
		createDataplanes(t, ns, mesh, i, 1)
		time.Sleep(outage / 2 / n)
	}
	time.Sleep(time.Until(stopped.Add(outage)))
	made := requests()
	if valid, _ := validSecrets(t, ns, testEnv.ca.Cert); valid != 0 {
		t.Fatalf("%d certificates issued with the signer down", valid)
	}
	// With a 5s timeout and backoff from 0.5s, a dataplane can try at most
	// once per 5s; a hot loop would make thousands.
	perDataplane := float64(made) / n
	t.Logf("%d CertificateRequests for %d dataplanes in a %s outage (%.1f each)", made, n, outage, perDataplane)
	if perDataplane > outage.Seconds()/5+1 || made < n {
		t.Errorf("%.1f requests per dataplane in %s; want between 1 and %.0f", perDataplane, outage, outage.Seconds()/5+1)
	}

	restartSigner()
	back := time.Now()
	waitFor(t, time.Minute, "the backlog to drain", func() bool {
		valid, _ := validSecrets(t, ns, testEnv.ca.Cert)
		return valid == n
	})
	t.Logf("the backlog of %d dataplanes drained %s after the signer returned", n, time.Since(back).Round(100*time.Millisecond))
}

// TestLeaderFailover runs two replicas with leader election, kills the
// leader, and checks that the other takes over issuance within 15 seconds,
// and that no dataplane is ever issued for by both.
func TestLeaderFailover(t *testing.T) {
	const ns, mesh = "leader", "leader"
	meshInNamespace(t, ns, mesh, certManagerMesh(mesh, "Issuer", "mesh-ca", "", ""))
	cleanupNamespace(t, ns)
	dir := t.TempDir()
	args := reconcilerArgs(ns,
		"--leader-elect", "--leader-election-namespace="+systemNamespace, "--leader-election-id=meshcert-failover-test",
		"--leader-election-lease-duration=8s", "--leader-election-renew-deadline=6s", "--leader-election-retry-period=1s")
	logA, logB := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	a, err := testEnv.cluster.StartProcess(logA, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Kill() })
	waitFor(t, 30*time.Second, "replica a to lead", func() bool { return strings.Contains(localcluster.Logs(logA), "Successfully acquired lease") })
	b, err := testEnv.cluster.StartProcess(logB, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Kill() })

	requests := requestsPerDataplane(t, client.MatchingLabels{kuma.ManagedMeshLabel: mesh})
	createDataplanes(t, ns, mesh, 0, 10)
	waitFor(t, 30*time.Second, "10 certificates", func() bool { v, _ := validSecrets(t, ns, testEnv.ca.Cert); return v == 10 })

	a.Kill()
	killed := time.Now()
	createDataplanes(t, ns, mesh, 10, 5)
	waitFor(t, 30*time.Second, "the other replica to issue", func() bool { v, _ := validSecrets(t, ns, testEnv.ca.Cert); return v == 15 })
	failover := time.Since(killed)
	t.Logf("replica b took over and issued 5 certificates %s after the leader was killed", failover.Round(100*time.Millisecond))
	if failover > 15*time.Second {
		t.Errorf("failover took %s, want at most 15s", failover)
	}
	if !strings.Contains(localcluster.Logs(logB), "Successfully acquired lease") {
		t.Error("replica b never led")
	}
	// Each dataplane was issued for once, by one replica: one request each.
	perDataplane := requests()
	for i := range 15 {
		if n := perDataplane[fmt.Sprintf("web-%d", i)]; n != 1 {
			t.Errorf("web-%d: %d CertificateRequests, want 1", i, n)
		}
	}
}

// TestWebhookSurvivesAReplicaGoing runs two webhook replicas behind a load
// balancer, and takes one away as Kubernetes does (out of the endpoints, then
// SIGTERM) while a stream of applies goes on. No apply may fail.
func TestWebhookSurvivesAReplicaGoing(t *testing.T) {
	dir := t.TempDir()
	var replicas []*localcluster.Process
	var addrs []string
	for _, name := range []string{"a", "b"} {
		port := freePort(t)
		p, err := testEnv.cluster.StartProcess(filepath.Join(dir, name+".log"),
			"--enable-reconciler=false", "--system-namespace="+systemNamespace, "--metrics-bind-address=0",
			"--webhook-host=127.0.0.1", fmt.Sprintf("--webhook-port=%d", port), "--webhook-cert-dir="+testEnv.cluster.CertDir,
			"--webhook-drain-period=3s", "--shutdown-timeout=10s")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Kill() })
		replicas = append(replicas, p)
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port))
	}
	lb, err := harness.NewLoadBalancer("127.0.0.1:0", addrs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	registerWebhooks(t, "meshcert-ha", lb.Addr())

	// A stream of applies: each an update of one Mesh, through both replicas.
	applyMesh(t, certManagerMesh("ha", "Issuer", "mesh-ca", "", ""))
	deleteMeshAtEnd(t, "ha")
	var ok, failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				u := &unstructured.Unstructured{}
				u.SetGroupVersionKind(meshGVK)
				u.SetName("ha")
				patch := fmt.Sprintf(`{"metadata":{"annotations":{"stream-%d":"%d"}}}`, w, i)
				if err := testEnv.cluster.Client.Patch(context.Background(), u, client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(3 * time.Second)
	before := ok.Load()
	lb.Remove(addrs[0])
	if err := replicas[0].Terminate(); err != nil {
		t.Errorf("replica a did not stop cleanly: %v", err)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d applies, %d of them after replica a was taken out; %d failed", ok.Load(), ok.Load()-before, failed.Load())
	if failed.Load() > 0 {
		failures.Range(func(k, _ any) bool { t.Errorf("apply failed: %s", k); return true })
	}
	if ok.Load()-before < 10 {
		t.Errorf("only %d applies after replica a went; the stream proves little", ok.Load()-before)
	}
}

// registerWebhooks registers meshcert's webhooks once more, by URL at addr,
// and removes them when the test ends.
func registerWebhooks(t *testing.T, name, addr string) {
	t.Helper()
	reg := webhook.RegistrationOptions{
		Name:           name,
		FailurePolicy:  admissionregistrationv1.Fail,
		TimeoutSeconds: 5,
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			url := "https://" + addr + path
			return admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: testEnv.cluster.WebhookCA}
		},
	}
	for _, obj := range []client.Object{webhook.MutatingConfiguration(reg), webhook.ValidatingConfiguration(reg)} {
		createObject(t, obj)
	}
	time.Sleep(2 * time.Second) // The API server picks up webhook configurations within a second or so.
}

// TestAPIServerRestart restarts kube-apiserver and etcd under a running
// meshcert, which reconnects and carries on without a restart of its own.
func TestAPIServerRestart(t *testing.T) {
	const ns, mesh = "api-restart", "api-restart"
	startReconciler(t, nil)
	meshInNamespace(t, ns, mesh, certManagerMesh(mesh, "Issuer", "mesh-ca", "", ""))
	cleanupNamespace(t, ns)
	createDataplanes(t, ns, mesh, 0, 1)
	waitFor(t, 20*time.Second, "the first certificate", func() bool { v, _ := validSecrets(t, ns, testEnv.ca.Cert); return v == 1 })

	if err := testEnv.cluster.RestartControlPlane(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the API server", func() bool {
		return testEnv.cluster.Client.List(context.Background(), &corev1.NamespaceList{}) == nil
	})
	createDataplanes(t, ns, mesh, 1, 1)
	waitFor(t, time.Minute, "a certificate issued after the restart", func() bool { v, _ := validSecrets(t, ns, testEnv.ca.Cert); return v == 2 })
	// The webhook answers again too.
	if run := runKubectl(t, "apply", "-f", "meshes/issuerref-missing-name.yaml"); run.exitCode == 0 || !strings.Contains(run.stderr, "is invalid") {
		t.Errorf("the webhook did not reject a broken Mesh after the restart:\n%s", run)
	}
}

// TestMalformedAdmissionRequests sends broken requests to the running
// webhook over TLS: each gets a 4xx answer, never a 500, and the server
// keeps serving.
func TestMalformedAdmissionRequests(t *testing.T) {
	client := webhookClient(t, nil)
	for _, target := range []struct{ path, kind, resource string }{
		{webhook.ValidatingPath, "Mesh", "meshes"},
		{webhook.MeshIdentityValidatingPath, "MeshIdentity", "meshidentities"},
		{webhook.MeshIdentityDefaultingPath, "MeshIdentity", "meshidentities"},
	} {
		url := fmt.Sprintf("https://%s:%d%s", testEnv.cluster.WebhookHost, testEnv.cluster.WebhookPort, target.path)
		valid := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","operation":"CREATE","name":"x",` +
			`"kind":{"group":"kuma.io","version":"v1alpha1","kind":"` + target.kind + `"},"resource":{"group":"kuma.io","version":"v1alpha1","resource":"` + target.resource + `"},"object":{"spec":{}}}}`
		tests := map[string]struct {
			contentType, body string
		}{
			"wrong content type": {contentType: "text/plain", body: valid},
			"empty body":         {contentType: "application/json"},
			"truncated JSON":     {contentType: "application/json", body: valid[:60]},
			"over the size limit": {contentType: "application/json",
				body: strings.Replace(valid, `"spec":{}`, `"spec":{"pad":"`+strings.Repeat("x", 8<<20)+`"}`, 1)},
			"missing object":  {contentType: "application/json", body: strings.Replace(valid, `,"object":{"spec":{}}`, "", 1)},
			"object not JSON": {contentType: "application/json", body: strings.Replace(valid, `{"spec":{}}`, `"mesh"`, 1)},
		}
		for name, tc := range tests {
			t.Run(target.path+": "+name, func(t *testing.T) {
				code, review := postReview(t, client, url, tc.contentType, tc.body)
				if code >= 500 || review.Response == nil || review.Response.Allowed || review.Response.Result.Code < 400 || review.Response.Result.Code >= 500 {
					t.Errorf("HTTP %d, answer %+v; want a 4xx denial", code, review.Response)
				}
			})
		}
		if code, review := postReview(t, client, url, "application/json", valid); code != 200 || !review.Response.Allowed {
			t.Errorf("%s stopped serving well-formed requests: HTTP %d %+v", target.path, code, review.Response)
		}
	}
}

// TestAdversarialMeshes sends hostile Meshes through the API server, whose
// webhook timeout is the chart's 5 seconds: each must get meshcert's answer.
func TestAdversarialMeshes(t *testing.T) {
	caPEM := string(testEnv.ca.PEM)
	future, err := testpki.New("not yet valid", time.Now().Add(24*time.Hour), time.Now().Add(testpki.LongLived))
	if err != nil {
		t.Fatal(err)
	}
	inline := func(pem string) string {
		return fmt.Sprintf(`{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"mesh-ca"},"caCert":{"inlineString":%q}}}]}}`, pem)
	}
	var thousand strings.Builder
	thousand.WriteString(`{"mtls":{"enabledBackend":"cm-0","backends":[`)
	for i := range 1000 {
		if i > 0 {
			thousand.WriteString(",")
		}
		fmt.Fprintf(&thousand, `{"name":"cm-%d","type":"certmanager","conf":{"issuerRef":{"name":"mesh-ca"}}}`, i)
	}
	thousand.WriteString(`]}}`)
	tests := map[string]struct {
		spec        string
		wantInvalid string
		wantWarning string
	}{
		"a private key in caCert": {
			spec:        inline(caPEM + "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"),
			wantInvalid: `PEM block 1 is of type "PRIVATE KEY": only CERTIFICATE blocks are allowed`,
		},
		"1 MiB of CA certificates": {spec: inline(strings.Repeat(caPEM, (1<<20)/len(caPEM)))},
		"1 MiB of junk PEM": {
			spec:        inline(strings.Repeat("-----BEGIN JUNK-----\nAAAA\n-----END JUNK-----\n", (1<<20)/40)),
			wantInvalid: "and 26194 more problems",
		},
		"a thousand backends": {spec: thousand.String()},
		"a CA not valid yet":  {spec: inline(string(future.PEM)), wantWarning: "is not valid before"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "kuma.io/v1alpha1", "kind": "Mesh", "metadata": map[string]any{"name": "adversarial"}}}
			if err := u.UnmarshalJSON([]byte(fmt.Sprintf(`{"apiVersion":"kuma.io/v1alpha1","kind":"Mesh","metadata":{"name":"adversarial"},"spec":%s}`, tc.spec))); err != nil {
				t.Fatal(err)
			}
			warnings := &warningRecorder{}
			c := clientWithWarnings(t, warnings)
			err := c.Create(context.Background(), u, client.DryRunAll)
			switch {
			case tc.wantInvalid == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.wantInvalid != "" && (err == nil || !strings.Contains(err.Error(), tc.wantInvalid)):
				t.Errorf("err = %v, want a rejection with %q", err, tc.wantInvalid)
			}
			if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
				t.Error("the rejection echoes the private key")
			}
			if tc.wantWarning != "" && !strings.Contains(strings.Join(warnings.all(), "\n"), tc.wantWarning) {
				t.Errorf("warnings %q lack %q", warnings.all(), tc.wantWarning)
			}
		})
	}
}

// TestTLSHardening: TLS below 1.2 is refused, 1.3 is enforced when
// configured, and HTTP/2 is off unless enabled.
func TestTLSHardening(t *testing.T) {
	addr := fmt.Sprintf("%s:%d", testEnv.cluster.WebhookHost, testEnv.cluster.WebhookPort)
	handshake := func(addr string, max uint16, protos ...string) (*tls.ConnectionState, error) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: webhookCAs(t), MaxVersion: max, NextProtos: protos})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		state := conn.ConnectionState()
		return &state, nil
	}
	if _, err := handshake(addr, tls.VersionTLS11); err == nil {
		t.Error("TLS 1.1 was accepted")
	}
	state, err := handshake(addr, tls.VersionTLS12, "h2", "http/1.1")
	if err != nil {
		t.Fatalf("TLS 1.2 was refused: %v", err)
	}
	if state.NegotiatedProtocol == "h2" {
		t.Error("HTTP/2 was negotiated; it must be off by default")
	}

	for name, tc := range map[string]struct {
		mutate  func(*config.Config)
		max     uint16
		wantErr bool
		wantH2  bool
	}{
		"--tls-min-version=1.3 refuses 1.2": {mutate: func(c *config.Config) { c.TLSMinVersion = tls.VersionTLS13 }, max: tls.VersionTLS12, wantErr: true},
		"--tls-min-version=1.3 serves 1.3":  {mutate: func(c *config.Config) { c.TLSMinVersion = tls.VersionTLS13 }, max: tls.VersionTLS13},
		"--enable-http2 negotiates h2":      {mutate: func(c *config.Config) { c.EnableHTTP2 = true }, max: tls.VersionTLS13, wantH2: true},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := testEnv.cluster.MeshcertConfig(systemNamespace)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ReconcilerEnabled = false
			cfg.WebhookPort = freePort(t)
			tc.mutate(&cfg)
			m, err := testEnv.cluster.StartMeshcert(context.Background(), cfg, localcluster.MeshcertOptions{Logs: testEnv.logs})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = m.Stop() })
			state, err := handshake(fmt.Sprintf("%s:%d", cfg.WebhookHost, cfg.WebhookPort), tc.max, "h2", "http/1.1")
			if (err != nil) != tc.wantErr {
				t.Fatalf("handshake error %v, want error %v", err, tc.wantErr)
			}
			if err == nil && (state.NegotiatedProtocol == "h2") != tc.wantH2 {
				t.Errorf("negotiated %q", state.NegotiatedProtocol)
			}
		})
	}
}

// TestNoKeyMaterialInLogsOrEvents issues with the most verbose logs, and
// looks for the keys in the logs and in every Event.
func TestNoKeyMaterialInLogsOrEvents(t *testing.T) {
	start := len(testEnv.logs.String())
	startReconciler(t, func(c *config.Config) { c.LogLevel = 10 })
	const ns, mesh = "secrecy", "secrecy"
	meshInNamespace(t, ns, mesh, certManagerMesh(mesh, "Issuer", "mesh-ca", "", ""))
	cleanupNamespace(t, ns)
	createDataplanes(t, ns, mesh, 0, 5)
	waitFor(t, 30*time.Second, "5 certificates", func() bool { v, _ := validSecrets(t, ns, testEnv.ca.Cert); return v == 5 })

	logs := testEnv.logs.String()[start:]
	var events strings.Builder
	var list corev1.EventList
	if err := testEnv.cluster.Client.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Items {
		events.WriteString(e.Message + "\n")
	}
	if strings.Contains(logs, "PRIVATE KEY") || strings.Contains(events.String(), "PRIVATE KEY") {
		t.Error("a PEM private key reached the logs or an Event")
	}
	for i := range 5 {
		key := secretOf(t, ns, fmt.Sprintf("web-%d", i)).Data[corev1.TLSPrivateKeyKey]
		for _, line := range strings.Split(string(key), "\n") {
			if len(line) > 20 && (strings.Contains(logs, line) || strings.Contains(events.String(), line)) {
				t.Errorf("a line of web-%d's key reached the logs or an Event", i)
			}
		}
	}
	t.Logf("searched %d bytes of debug logs and %d Events", len(logs), len(list.Items))
}
