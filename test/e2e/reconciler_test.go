package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/test/harness"
)

// TestIssuesKumaIdentities applies the example mesh and dataplanes with
// kubectl, and checks each Secret: Kuma's exact SANs, a matching key, and a
// chain to the issuer's CA, which came from status.ca (the mesh has no caCert).
func TestIssuesKumaIdentities(t *testing.T) {
	startReconciler(t, nil)
	for _, f := range []string{"issuance/mesh.yaml", "issuance/plain-mesh.yaml", "issuance/dataplanes.yaml"} {
		if run := runKubectl(t, "apply", "-f", f); run.exitCode != 0 {
			t.Fatalf("applying %s:\n%s", f, run)
		}
	}
	t.Cleanup(func() {
		runKubectl(t, "delete", "-f", "issuance/dataplanes.yaml")
		deleteMesh(t, "issuance")
		deleteMesh(t, "plain-issuance")
	})

	want := map[string][]string{
		"web-1": {"spiffe://issuance/web", "kuma://kuma.io/protocol/http", "kuma://kuma.io/service/web", "kuma://version/v1"},
		"multi-1": {"spiffe://issuance/orders", "spiffe://issuance/orders-admin",
			"kuma://kuma.io/service/orders", "kuma://kuma.io/service/orders-admin", "kuma://version/v2"},
		"edge-1": {"spiffe://issuance/edge", "kuma://kuma.io/service/edge"},
		// No service tag: the kuma.io/workload annotation, which Kuma reads as a
		// label, is the one service and the only tag.
		"payments-1": {"spiffe://issuance/payments", "kuma://kuma.io/service/payments"},
	}
	for dp, uris := range want {
		s := waitSecret(t, "issuance", dp, 30*time.Second, nil)
		assertValidSecret(t, s, uris, testEnv.ca.Cert)
		if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].Kind != "Dataplane" || s.OwnerReferences[0].Name != dp {
			t.Errorf("%s: owner references %+v, want the Dataplane", dp, s.OwnerReferences)
		}
		for _, a := range []string{kuma.MeshAnnotation, kuma.BackendAnnotation, kuma.IdentityHashAnnotation, kuma.NotAfterAnnotation} {
			if s.Annotations[a] == "" {
				t.Errorf("%s: annotation %s missing", dp, a)
			}
		}
		if got := leafOf(t, s).NotAfter.Sub(leafOf(t, s).NotBefore); got < 59*time.Minute || got > 61*time.Minute {
			t.Errorf("%s: lifetime %s, want the mesh's 1h", dp, got)
		}
	}

	waitFor(t, 10*time.Second, "the NoIdentity event", func() bool {
		return len(eventsFor(t, "Dataplane", "anonymous-1")["NoIdentity"]) > 0
	})
	note := eventsFor(t, "Dataplane", "anonymous-1")["NoIdentity"][0]
	if want := `dataplane "anonymous-1.issuance" has no kuma.io/service tag and no kuma.io/workload label, cannot derive mTLS identity`; note != want {
		t.Errorf("NoIdentity event says %q, want Kuma's %q", note, want)
	}
	for _, dp := range []string{"anonymous-1", "plain-1"} {
		if s := secretOf(t, "issuance", dp); s != nil {
			t.Errorf("%s got a Secret", dp)
		}
	}
	if left := requestsOf(t, "issuance", "web-1"); len(left) != 0 {
		t.Errorf("%d CertificateRequests left after issuance", len(left))
	}

	// Logs never hold key material.
	logs := testEnv.logs.String()
	for dp := range want {
		key := secretOf(t, "issuance", dp).Data[corev1.TLSPrivateKeyKey]
		for _, line := range strings.Split(string(key), "\n") {
			if len(line) > 20 && strings.Contains(logs, line) {
				t.Errorf("the logs contain a line of %s's private key", dp)
			}
		}
	}
	if strings.Contains(logs, "PRIVATE KEY") {
		t.Error("the logs contain a PEM private key")
	}

	for _, name := range []string{
		"meshcert_certificates_issued_total", "meshcert_issuance_failures_total", "meshcert_issuance_duration_seconds",
		"meshcert_certificates_expiring_soon", "meshcert_certificate_requests_in_flight", "meshcert_certificates",
	} {
		if !metricExists(t, name) {
			t.Errorf("metric %s is not exported", name)
		}
	}
}

// TestIssue100Dataplanes measures issuance for 100 dataplanes end to end:
// from their creation to 100 valid Secrets. It reports the time; speed is
// judged by the benchmarks, not here.
func TestIssue100Dataplanes(t *testing.T) {
	startReconciler(t, nil)
	ns := "hundred"
	meshInNamespace(t, ns, "hundred", certManagerMesh("hundred", "Issuer", "mesh-ca", "", ""))
	const n = 100
	start := time.Now()
	for i := range n {
		createObject(t, newDataplane(ns, fmt.Sprintf("web-%d", i), "hundred", map[string]string{"kuma.io/service": fmt.Sprintf("web-%d", i)}))
	}
	created := time.Since(start)
	waitFor(t, 2*time.Minute, "100 Secrets", func() bool {
		var list corev1.SecretList
		if err := testEnv.cluster.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		return len(list.Items) == n
	})
	elapsed := time.Since(start)
	for i := range n {
		name := fmt.Sprintf("web-%d", i)
		assertValidSecret(t, secretOf(t, ns, name), []string{"spiffe://hundred/" + name, "kuma://kuma.io/service/" + name}, testEnv.ca.Cert)
	}
	t.Logf("100 dataplanes: created in %s, all Secrets delivered %s after the first was created (%.0f certificates/s)",
		created.Round(time.Millisecond), elapsed.Round(time.Millisecond), n/elapsed.Seconds())
}

// TestRequestsInFlightAreCapped: a mesh larger than --max-requests-in-flight
// is issued a few requests at a time, and every dataplane gets its turn.
func TestRequestsInFlightAreCapped(t *testing.T) {
	const inFlight, workers, n = 4, 2, 40
	startReconciler(t, func(c *config.Config) { c.MaxInFlight, c.Workers = inFlight, workers })
	ns := "capped"
	var mu sync.Mutex
	open, most := 0, 0
	watchRequestEvents(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: ns}, func(ev watch.EventType, _ *cmapi.CertificateRequest) {
		mu.Lock()
		defer mu.Unlock()
		if ev == watch.Added {
			open++
		} else {
			open--
		}
		most = max(most, open)
	})
	meshInNamespace(t, ns, "capped", certManagerMesh("capped", "Issuer", "mesh-ca", "", ""))
	for i := range n {
		createObject(t, newDataplane(ns, fmt.Sprintf("web-%d", i), "capped", map[string]string{"kuma.io/service": fmt.Sprintf("web-%d", i)}))
	}
	for i := range n {
		name := fmt.Sprintf("web-%d", i)
		s := waitSecret(t, ns, name, time.Minute, func(s *corev1.Secret) bool { return len(s.Data[corev1.TLSCertKey]) > 0 })
		assertValidSecret(t, s, []string{"spiffe://capped/" + name, "kuma://kuma.io/service/" + name}, testEnv.ca.Cert)
	}
	mu.Lock()
	defer mu.Unlock()
	if most > inFlight {
		t.Errorf("%d CertificateRequests open at once, want at most %d", most, inFlight)
	}
	if most < inFlight {
		t.Errorf("at most %d CertificateRequests open at once: the cap of %d was never reached, so this test shows nothing", most, inFlight)
	}
}

// TestRotation: a short-lived certificate is renewed before it expires, with
// a new key.
func TestRotation(t *testing.T) {
	startReconciler(t, nil)
	ns := "rotation"
	meshInNamespace(t, ns, "rotation", certManagerMesh("rotation", "Issuer", "mesh-ca", "", "10s"))
	createObject(t, newDataplane(ns, "web", "rotation", map[string]string{"kuma.io/service": "web"}))

	first := waitSecret(t, ns, "web", 20*time.Second, nil)
	firstLeaf := leafOf(t, first)
	second := waitSecret(t, ns, "web", 20*time.Second, func(s *corev1.Secret) bool {
		return leafOf(t, s).SerialNumber.Cmp(firstLeaf.SerialNumber) != 0
	})
	renewedAfter := leafOf(t, second).NotBefore.Sub(firstLeaf.NotBefore)
	// Kuma renews at 4/5 of the lifetime; the jitter brings it up to a tenth earlier.
	if renewedAfter < 6*time.Second || renewedAfter > 9*time.Second {
		t.Errorf("renewed %s after issuance, want between 7s and 8s of a 10s lifetime (give or take a second)", renewedAfter)
	}
	if string(second.Data[corev1.TLSPrivateKeyKey]) == string(first.Data[corev1.TLSPrivateKeyKey]) {
		t.Error("the renewed certificate reuses the old key")
	}
	assertValidSecret(t, second, []string{"spiffe://rotation/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)
}

// TestReissues: a tag change, a backend switch, a deleted Secret and a
// tampered Secret each bring a new certificate at once.
func TestReissues(t *testing.T) {
	startReconciler(t, nil)
	ns := "reissue"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	twoBackends := func(enabled string) string {
		return fmt.Sprintf(`apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: reissue
spec:
  mtls:
    enabledBackend: %s
    backends:
      - name: ca-a
        type: certmanager
        conf:
          issuerRef:
            name: mesh-ca
      - name: ca-b
        type: certmanager
        conf:
          issuerRef:
            name: other-ca
`, enabled)
	}
	applyMesh(t, twoBackends("ca-a"))
	deleteMeshAtEnd(t, "reissue")
	dp := newDataplane(ns, "web", "reissue", map[string]string{"kuma.io/service": "web"})
	createObject(t, dp)
	s := waitSecret(t, ns, "web", 20*time.Second, nil)
	assertValidSecret(t, s, []string{"spiffe://reissue/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)

	serial := func(s *corev1.Secret) string { return leafOf(t, s).SerialNumber.String() }
	newSerial := func(old *corev1.Secret) func(*corev1.Secret) bool {
		was := serial(old)
		return func(s *corev1.Secret) bool { return serial(s) != was }
	}

	t.Run("tag change", func(t *testing.T) {
		updated := newDataplane(ns, "web", "reissue", map[string]string{"kuma.io/service": "web", "version": "v2"})
		if err := testEnv.cluster.Client.Get(context.Background(), client.ObjectKeyFromObject(dp), dp); err != nil {
			t.Fatal(err)
		}
		dp.Spec = updated.Spec
		if err := testEnv.cluster.Client.Update(context.Background(), dp); err != nil {
			t.Fatal(err)
		}
		s = waitSecret(t, ns, "web", 20*time.Second, newSerial(s))
		assertValidSecret(t, s, []string{"spiffe://reissue/web", "kuma://kuma.io/service/web", "kuma://version/v2"}, testEnv.ca.Cert)
	})
	t.Run("backend switch", func(t *testing.T) {
		applyMesh(t, twoBackends("ca-b"))
		s = waitSecret(t, ns, "web", 20*time.Second, newSerial(s))
		assertValidSecret(t, s, []string{"spiffe://reissue/web", "kuma://kuma.io/service/web", "kuma://version/v2"}, testEnv.other.Cert)
		if got := s.Annotations[kuma.BackendAnnotation]; got != "ca-b" {
			t.Errorf("backend annotation %q, want ca-b", got)
		}
	})
	t.Run("deleted Secret", func(t *testing.T) {
		old := s
		if err := testEnv.cluster.Client.Delete(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		s = waitSecret(t, ns, "web", 20*time.Second, newSerial(old))
	})
	t.Run("tampered key", func(t *testing.T) {
		other, err := testpki.New("not-the-key", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived))
		if err != nil {
			t.Fatal(err)
		}
		old := s.DeepCopy()
		s.Data[corev1.TLSPrivateKeyKey] = other.KeyPEM
		if err := testEnv.cluster.Client.Update(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		s = waitSecret(t, ns, "web", 20*time.Second, newSerial(old))
		assertValidSecret(t, s, []string{"spiffe://reissue/web", "kuma://kuma.io/service/web", "kuma://version/v2"}, testEnv.other.Cert)
	})
	t.Run("tampered ca.crt", func(t *testing.T) {
		old := s.DeepCopy()
		s.Data["ca.crt"] = testEnv.ca.PEM
		if err := testEnv.cluster.Client.Update(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		s = waitSecret(t, ns, "web", 20*time.Second, newSerial(old))
		assertValidSecret(t, s, []string{"spiffe://reissue/web", "kuma://kuma.io/service/web", "kuma://version/v2"}, testEnv.other.Cert)
	})
	t.Run("mTLS off leaves the Secret alone", func(t *testing.T) {
		applyMesh(t, strings.Replace(twoBackends("ca-b"), "enabledBackend: ca-b", `enabledBackend: ""`, 1))
		kept := s.ResourceVersion
		createObject(t, newDataplane(ns, "late", "reissue", map[string]string{"kuma.io/service": "late"}))
		time.Sleep(2 * time.Second)
		if got := secretOf(t, ns, "web"); got == nil || got.ResourceVersion != kept {
			t.Errorf("the Secret changed after mTLS was turned off")
		}
		if secretOf(t, ns, "late") != nil {
			t.Errorf("a dataplane got a certificate while mTLS is off")
		}
	})
}

// TestDeniedRequestBacksOff: a denied request is reported with the policy's
// message, retried with exponential backoff rather than in a hot loop, and
// issued as soon as the policy allows it, without a restart.
func TestDeniedRequestBacksOff(t *testing.T) {
	startReconciler(t, nil)
	ns := "denied"
	meshInNamespace(t, ns, "denied", certManagerMesh("denied", "Issuer", "denied-ca", "", ""))
	requests := requestTimes(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: ns, kuma.DataplaneNameLabel: "web"})
	createObject(t, newDataplane(ns, "web", "denied", map[string]string{"kuma.io/service": "web"}))

	waitFor(t, 10*time.Second, "the Denied event", func() bool { return len(eventsFor(t, "Dataplane", "web")["Denied"]) > 0 })
	time.Sleep(14 * time.Second)
	// Backoff 0.5s doubling to 4s: tries at about 0, 0.5, 1.5, 3.5, 7.5,
	// 11.5 and 15.5 seconds. A hot loop would make hundreds.
	gaps := backoffGaps(t, requests(), 4, 9, 4*time.Second)
	if len(gaps) > 0 && gaps[len(gaps)-1] < 3500*time.Millisecond {
		t.Errorf("the last gap %s did not reach the 4s cap", gaps[len(gaps)-1])
	}
	for kind, name := range map[string]string{"Dataplane": "web", "Mesh": "denied"} {
		notes := eventsFor(t, kind, name)["Denied"]
		if len(notes) == 0 || !strings.Contains(notes[0], "no policy allows requests for denied-ca") {
			t.Errorf("%s %s: Denied events %q lack the policy's message", kind, name, notes)
		}
	}
	if s := secretOf(t, ns, "web"); s != nil {
		t.Fatal("a denied dataplane got a Secret")
	}

	testEnv.hooks.SetPolicy(func(*cmapi.CertificateRequest) harness.Decision { return harness.Decision{Approve: true} })
	t.Cleanup(func() { testEnv.hooks.SetPolicy(approveAllButDenied) })
	waitSecret(t, ns, "web", 10*time.Second, nil)
	if left := requestsOf(t, ns, "web"); len(left) != 0 {
		t.Errorf("%d CertificateRequests left", len(left))
	}
}

// TestMissingCA: an issuer that sets no status.ca, on a backend without
// caCert, leaves no trust bundle to deliver: nothing broken is written, and
// an Event on the Mesh says to set caCert.
func TestMissingCA(t *testing.T) {
	startReconciler(t, nil)
	ns := "missing-ca"
	meshInNamespace(t, ns, "missing-ca", certManagerMesh("missing-ca", "ExternalIssuer", "vault", externalGroup, ""))
	createObject(t, newDataplane(ns, "web", "missing-ca", map[string]string{"kuma.io/service": "web"}))

	waitFor(t, 15*time.Second, "the MissingCA event on the Mesh", func() bool { return len(eventsFor(t, "Mesh", "missing-ca")["MissingCA"]) > 0 })
	if note := eventsFor(t, "Mesh", "missing-ca")["MissingCA"][0]; !strings.Contains(note, "set conf.caCert") {
		t.Errorf("MissingCA event %q does not say to set caCert", note)
	}
	if secretOf(t, ns, "web") != nil {
		t.Error("a Secret was written without a trust bundle")
	}
}

// TestCACertFromMeshSecret: with caCert, the trust bundle is the mesh
// Secret's CA, even from an issuer that sets no status.ca.
func TestCACertFromMeshSecret(t *testing.T) {
	startReconciler(t, nil)
	ns := "external"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	secret := &corev1.Secret{
		ObjectMeta: objectMeta(systemNamespace, "external-ca"),
		Type:       kuma.MeshSecretType,
		Data:       map[string][]byte{"value": testEnv.other.PEM},
	}
	secret.Labels = map[string]string{kuma.MeshLabel: "external"}
	createObject(t, secret)
	applyMesh(t, certManagerMesh("external", "ExternalIssuer", "vault", externalGroup, "")+"          caCert:\n            secret: external-ca\n")
	deleteMeshAtEnd(t, "external")
	createObject(t, newDataplane(ns, "web", "external", map[string]string{"kuma.io/service": "web"}))
	s := waitSecret(t, ns, "web", 20*time.Second, nil)
	assertValidSecret(t, s, []string{"spiffe://external/web", "kuma://kuma.io/service/web"}, testEnv.other.Cert)
}

// TestDeletedDataplaneLosesItsSecret: the reconciler itself deletes the
// Secret of a deleted dataplane; this cluster runs no garbage collector.
func TestDeletedDataplaneLosesItsSecret(t *testing.T) {
	startReconciler(t, nil)
	ns := "deletion"
	meshInNamespace(t, ns, "deletion", certManagerMesh("deletion", "ClusterIssuer", "mesh-ca", "", ""))
	dp := newDataplane(ns, "web", "deletion", map[string]string{"kuma.io/service": "web"})
	createObject(t, dp)
	waitSecret(t, ns, "web", 20*time.Second, nil)
	if err := testEnv.cluster.Client.Delete(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the Secret to go", func() bool { return secretOf(t, ns, "web") == nil })
}

// TestRestartMidIssuance: a reconciler stopped while its requests wait for
// approval, and a new one started, leave exactly one request per dataplane,
// then none once issued; the new one never uses the dead one's requests,
// whose keys died with it.
func TestRestartMidIssuance(t *testing.T) {
	ns := "restart"
	meshInNamespace(t, ns, "restart", certManagerMesh("restart", "Issuer", "mesh-ca", "", ""))
	// Hold every request undecided while the reconciler restarts.
	testEnv.hooks.SetPolicy(nil)
	t.Cleanup(func() { testEnv.hooks.SetPolicy(approveAllButDenied) })

	first := startFirst(t)
	const n = 5
	for i := range n {
		createObject(t, newDataplane(ns, fmt.Sprintf("web-%d", i), "restart", map[string]string{"kuma.io/service": "web"}))
	}
	uids := map[string]string{}
	waitFor(t, 10*time.Second, "a request per dataplane", func() bool {
		for i := range n {
			crs := requestsOf(t, ns, fmt.Sprintf("web-%d", i))
			if len(crs) != 1 {
				return false
			}
			uids[crs[0].Name] = string(crs[0].UID)
		}
		return true
	})
	if err := first(); err != nil {
		t.Fatal(err)
	}

	startReconciler(t, nil)
	waitFor(t, 15*time.Second, "the new reconciler to replace the dead one's requests", func() bool {
		for i := range n {
			crs := requestsOf(t, ns, fmt.Sprintf("web-%d", i))
			if len(crs) != 1 || uids[crs[0].Name] == string(crs[0].UID) {
				return false
			}
		}
		return true
	})
	testEnv.hooks.SetPolicy(approveAllButDenied)
	for i := range n {
		s := waitSecret(t, ns, fmt.Sprintf("web-%d", i), 20*time.Second, nil)
		assertValidSecret(t, s, []string{"spiffe://restart/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)
	}
	waitFor(t, 5*time.Second, "no CertificateRequest left", func() bool {
		for i := range n {
			if len(requestsOf(t, ns, fmt.Sprintf("web-%d", i))) != 0 {
				return false
			}
		}
		return true
	})
}

// startFirst starts a reconciler that the test stops itself.
func startFirst(t *testing.T) func() error {
	t.Helper()
	cfg, err := testEnv.cluster.MeshcertConfig(systemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WebhookEnabled = false
	m, err := testEnv.cluster.StartMeshcert(context.Background(), cfg, localcluster.MeshcertOptions{Logs: testEnv.logs})
	if err != nil {
		t.Fatal(err)
	}
	return m.Stop
}

// TestSteadyStateWritesNothing: once every certificate is delivered, resyncs
// reconcile every dataplane again and write nothing.
func TestSteadyStateWritesNothing(t *testing.T) {
	calls := startReconciler(t, func(c *config.Config) { c.SyncPeriod = time.Second })
	ns := "steady"
	meshInNamespace(t, ns, "steady", certManagerMesh("steady", "Issuer", "mesh-ca", "", ""))
	const n = 10
	for i := range n {
		createObject(t, newDataplane(ns, fmt.Sprintf("web-%d", i), "steady", map[string]string{"kuma.io/service": "web"}))
	}
	for i := range n {
		waitSecret(t, ns, fmt.Sprintf("web-%d", i), 30*time.Second, nil)
	}
	time.Sleep(time.Second) // Let the last deletions of requests land.
	before := reconciles(t)
	calls.reset()
	time.Sleep(4 * time.Second)
	if resynced := reconciles(t) - before; resynced < 2*n {
		t.Fatalf("only %v reconciles in 4 resync periods; the test proves nothing", resynced)
	}
	if writes := calls.snapshot(); len(writes) != 0 {
		t.Errorf("writes in steady state: %v", writes)
	}
}

// TestForeignSecretIsNeverOverwritten: a Secret that meshcert does not manage,
// with the name meshcert would use, is left alone, and an Event says so.
func TestForeignSecretIsNeverOverwritten(t *testing.T) {
	startReconciler(t, nil)
	ns := "foreign"
	meshInNamespace(t, ns, "foreign", certManagerMesh("foreign", "Issuer", "mesh-ca", "", ""))
	mine := &corev1.Secret{ObjectMeta: objectMeta(ns, dataplane.SecretName("web")), Data: map[string][]byte{"app": []byte("mine")}}
	createObject(t, mine)
	requests := countRequests(t, ns, "web")
	createObject(t, newDataplane(ns, "web", "foreign", map[string]string{"kuma.io/service": "web"}))

	waitFor(t, 15*time.Second, "the SecretConflict event", func() bool { return len(eventsFor(t, "Dataplane", "web")["SecretConflict"]) > 0 })
	time.Sleep(5 * time.Second)
	got := secretOf(t, ns, "web")
	if string(got.Data["app"]) != "mine" || len(got.Data) != 1 || got.ResourceVersion != mine.ResourceVersion {
		t.Errorf("the foreign Secret was changed: %v", got.Data)
	}
	// Once the name is known to be taken, no certificate is asked for until it is free.
	if n := requests(); n != 1 {
		t.Errorf("%d CertificateRequests while the name is taken, want 1", n)
	}
	if err := testEnv.cluster.Client.Delete(context.Background(), mine); err != nil {
		t.Fatal(err)
	}
	waitSecret(t, ns, "web", 15*time.Second, nil)
}

// TestDataplaneNamespaces: with --dataplane-namespaces, meshcert serves only
// those namespaces, where alone it needs Secret rights.
func TestDataplaneNamespaces(t *testing.T) {
	startReconciler(t, func(c *config.Config) { c.DataplaneNamespaces = []string{"scoped-in"} })
	for _, ns := range []string{"scoped-in", "scoped-out"} {
		createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	}
	applyMesh(t, certManagerMesh("scoped", "Issuer", "mesh-ca", "", ""))
	deleteMeshAtEnd(t, "scoped")
	createObject(t, newDataplane("scoped-out", "web", "scoped", map[string]string{"kuma.io/service": "web"}))
	createObject(t, newDataplane("scoped-in", "web", "scoped", map[string]string{"kuma.io/service": "web"}))
	waitSecret(t, "scoped-in", "web", 15*time.Second, nil)
	time.Sleep(time.Second)
	if secretOf(t, "scoped-out", "web") != nil {
		t.Error("a dataplane outside --dataplane-namespaces got a Secret")
	}
}

// TestKeyAlgorithms: a Mesh's meshcert.io/key-algorithm annotation chooses
// its dataplanes' keys, signed by cert-manager's CA issuer, and changing it
// reissues them.
func TestKeyAlgorithms(t *testing.T) {
	startReconciler(t, nil)
	ns := "key-algorithms"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	withKey := func(alg string) string {
		return strings.Replace(certManagerMesh("keys", "Issuer", "mesh-ca", "", ""), "  name: keys\n", "  name: keys\n  annotations:\n    meshcert.io/key-algorithm: "+alg+"\n", 1)
	}
	applyMesh(t, withKey("ed25519"))
	deleteMeshAtEnd(t, "keys")
	createObject(t, newDataplane(ns, "web", "keys", map[string]string{"kuma.io/service": "web"}))

	keyOf := func(s *corev1.Secret) crypto.Signer {
		key, err := pki.DecodePrivateKeyBytes(s.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	s := waitSecret(t, ns, "web", 20*time.Second, nil)
	assertValidSecret(t, s, []string{"spiffe://keys/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)
	if _, ok := keyOf(s).(ed25519.PrivateKey); !ok {
		t.Fatalf("the key is a %T, want Ed25519", keyOf(s))
	}
	applyMesh(t, withKey("ecdsa-p384"))
	s = waitSecret(t, ns, "web", 20*time.Second, func(s *corev1.Secret) bool {
		k, ok := keyOf(s).(*ecdsa.PrivateKey)
		return ok && k.Curve == elliptic.P384()
	})
	assertValidSecret(t, s, []string{"spiffe://keys/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)
}

// TestDeliveredSecretAndRequestMetadata: each CertificateRequest names the
// identities it asks for and carries --certificate-request-annotations; each
// delivered Secret carries cert-manager's own annotations, so kubectl
// describe shows where its certificate came from.
func TestDeliveredSecretAndRequestMetadata(t *testing.T) {
	startReconciler(t, func(c *config.Config) {
		c.KeepRequests = true
		c.CertificateRequestAnnotations = map[string]string{"policy.example.com/team": "payments"}
	})
	ns := "described"
	meshInNamespace(t, ns, "described", certManagerMesh("described", "Issuer", "mesh-ca", "", ""))
	createObject(t, newDataplane(ns, "web", "described", map[string]string{"kuma.io/service": "web"}))
	waitSecret(t, ns, "web", 20*time.Second, nil)

	crs := listRequests(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: ns})
	if len(crs) != 1 {
		t.Fatalf("%d requests kept, want 1", len(crs))
	}
	for k, want := range map[string]string{
		"meshcert.io/identities":  "spiffe://described/web,kuma://kuma.io/service/web",
		"policy.example.com/team": "payments",
		"meshcert.io/owner":       "Dataplane:described/web",
	} {
		if got := crs[0].Annotations[k]; got != want {
			t.Errorf("request annotation %s = %q, want %q", k, got, want)
		}
	}
	t.Cleanup(func() {
		for i := range crs {
			_ = testEnv.cluster.Client.Delete(context.Background(), &crs[i])
		}
	})

	run := runKubectl(t, "-n", ns, "describe", "secret", "web-mtls")
	if run.exitCode != 0 {
		t.Fatalf("kubectl describe:\n%s", run)
	}
	// What changes from run to run: the expiry, and the sizes of the PEM.
	run.stdout = regexp.MustCompile(`(meshcert\.io/not-after: )\S+`).ReplaceAllString(run.stdout, "${1}<not-after>")
	run.stdout = regexp.MustCompile(`(?m)^(\S+):\s+\d+ bytes$`).ReplaceAllString(run.stdout, "${1}:  <n> bytes")
	// kubectl lists the data in map order.
	if head, data, ok := strings.Cut(run.stdout, "Data\n====\n"); ok {
		lines := strings.Split(strings.TrimSuffix(data, "\n"), "\n")
		slices.Sort(lines)
		run.stdout = head + "Data\n====\n" + strings.Join(lines, "\n") + "\n"
	}
	assertGolden(t, "describe-secret", run)
}
