package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
)

// apiCalls counts the requests meshcert sends to the API server that change
// something, by verb and resource, e.g. "POST certificaterequests".
type apiCalls struct {
	mu     sync.Mutex
	counts map[string]int
}

func (a *apiCalls) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if req.Method != http.MethodGet {
			a.mu.Lock()
			a.counts[req.Method+" "+resourceOf(req.URL.Path)]++
			a.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

// resourceOf finds the resource in an API path such as
// /apis/cert-manager.io/v1/namespaces/x/certificaterequests/name.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if i := slices.Index(parts, "namespaces"); i >= 0 && len(parts) > i+2 {
		return parts[i+2]
	}
	if len(parts) >= 3 {
		return parts[len(parts)-1]
	}
	return path
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (a *apiCalls) snapshot() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]int{}
	for k, v := range a.counts {
		out[k] = v
	}
	return out
}

func (a *apiCalls) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.counts = map[string]int{}
}

// startReconciler runs a reconciler of its own for one test, with short
// timeouts and backoffs, and stops it when the test ends.
func startReconciler(t *testing.T, mutate func(*config.Config)) *apiCalls {
	t.Helper()
	cfg, err := testEnv.cluster.MeshcertConfig(systemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WebhookEnabled = false
	cfg.ReconcilerEnabled = true
	cfg.RequestTimeout = 5 * time.Second
	cfg.BackoffInitial = 500 * time.Millisecond
	cfg.BackoffMax = 4 * time.Second
	cfg.SwitchWindow = 2 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	calls := &apiCalls{counts: map[string]int{}}
	m, err := testEnv.cluster.StartMeshcert(context.Background(), cfg, localcluster.MeshcertOptions{Logs: testEnv.logs, Wrap: calls.wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stopping the reconciler: %v", err)
		}
		if t.Failed() {
			t.Logf("meshcert's last log lines:\n%s", localcluster.LastLines(testEnv.logs.String(), 60))
		}
	})
	return calls
}

// newDataplane returns a Dataplane with one inbound carrying tags.
func newDataplane(ns, name, mesh string, tags map[string]string) *kuma.DataplaneResource {
	spec, _ := json.Marshal(map[string]any{"networking": map[string]any{
		"address": "10.0.0.1",
		"inbound": []any{map[string]any{"port": 8080, "tags": tags}},
	}})
	return &kuma.DataplaneResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Mesh:       mesh,
		Spec:       spec,
	}
}

// applyMesh creates or replaces a Mesh through the webhook, from YAML.
func applyMesh(t *testing.T, manifest string) {
	t.Helper()
	stdout, stderr, err := testEnv.cluster.Kubectl(context.Background(), []byte(manifest), "apply", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s%s", err, stdout, stderr)
	}
}

// certManagerMesh is a Mesh whose enabled backend uses an issuer.
func certManagerMesh(name, issuerKind, issuer, group, expiration string) string {
	if group == "" {
		group = "cert-manager.io"
	}
	if expiration == "" {
		expiration = "1h"
	}
	return fmt.Sprintf(`apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: %s
spec:
  mtls:
    enabledBackend: cm
    backends:
      - name: cm
        type: certmanager
        dpCert:
          rotation:
            expiration: %s
        conf:
          issuerRef:
            name: %s
            kind: %s
            group: %s
`, name, expiration, issuer, issuerKind, group)
}

func createObject(t *testing.T, obj client.Object) {
	t.Helper()
	if err := testEnv.cluster.Client.Create(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := client.IgnoreNotFound(testEnv.cluster.Client.Delete(context.Background(), obj)); err != nil {
			t.Errorf("deleting %s: %v", obj.GetName(), err)
		}
	})
}

// meshInNamespace creates namespace ns and applies the manifest of Mesh
// mesh; both are deleted when the test ends.
func meshInNamespace(t *testing.T, ns, mesh, manifest string) {
	t.Helper()
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	applyMesh(t, manifest)
	deleteMeshAtEnd(t, mesh)
}

// deleteMeshAtEnd deletes a Mesh when the test ends.
func deleteMeshAtEnd(t *testing.T, name string) {
	t.Cleanup(func() { deleteMesh(t, name) })
}

// secretOf reads a dataplane's delivered Secret from the API, or nil.
func secretOf(t *testing.T, ns, dp string) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	err := testEnv.cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: dataplane.SecretName(dp)}, &s)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return &s
}

// waitFor polls until cond holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// waitSecret waits for a dataplane's Secret that passes ok.
func waitSecret(t *testing.T, ns, dp string, timeout time.Duration, ok func(*corev1.Secret) bool) *corev1.Secret {
	t.Helper()
	var s *corev1.Secret
	waitFor(t, timeout, "the Secret of "+ns+"/"+dp, func() bool {
		s = secretOf(t, ns, dp)
		return s != nil && (ok == nil || ok(s))
	})
	return s
}

// leafOf parses a delivered Secret's certificate.
func leafOf(t *testing.T, s *corev1.Secret) *x509.Certificate {
	t.Helper()
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

// assertValidSecret checks a delivered Secret: exactly these URI SANs, a key
// that matches, a chain that verifies against ca.crt to the given CA, which
// ca.crt holds (with the roots of the mesh's other backends, if any).
func assertValidSecret(t *testing.T, s *corev1.Secret, wantURIs []string, ca *x509.Certificate) {
	t.Helper()
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %q, want kubernetes.io/tls", s.Type)
	}
	leaf := leafOf(t, s)
	var got []string
	for _, u := range leaf.URIs {
		got = append(got, u.String())
	}
	if !slices.Equal(got, wantURIs) {
		t.Errorf("URI SANs %q, want %q", got, wantURIs)
	}
	key, err := pki.DecodePrivateKeyBytes(s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := pki.PublicKeyMatchesCertificate(key.Public(), leaf); err != nil || !ok {
		t.Errorf("tls.key does not match tls.crt")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.Data["ca.crt"]) {
		t.Fatalf("ca.crt holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the certificate does not verify against ca.crt as a client: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the certificate does not verify against ca.crt as a server: %v", err)
	}
	only := x509.NewCertPool()
	only.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: only, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the certificate is not from CA %q: %v", ca.Subject, err)
	}
	if !slices.ContainsFunc(rootsOf(t, s), ca.Equal) {
		t.Errorf("ca.crt lacks the issuer's CA %q", ca.Subject)
	}
}

// rootsOf parses a Secret's ca.crt.
func rootsOf(t *testing.T, s *corev1.Secret) []*x509.Certificate {
	t.Helper()
	cas, err := pki.DecodeX509CertificateSetBytes(s.Data["ca.crt"])
	if err != nil {
		t.Fatalf("ca.crt: %v", err)
	}
	return cas
}

// eventsFor lists the Events about an object of that kind and name, by
// reason. Events about cluster-scoped objects, such as Meshes, are in the
// default namespace.
func eventsFor(t *testing.T, kind, name string) map[string][]string {
	t.Helper()
	var list eventsv1.EventList
	if err := testEnv.cluster.Client.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range list.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name {
			out[e.Reason] = append(out[e.Reason], e.Note)
		}
	}
	return out
}

// countRequests counts the CertificateRequests created for a dataplane from
// now on, through a watch.
func countRequests(t *testing.T, ns, dp string) func() int {
	t.Helper()
	return watchRequests(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: ns, kuma.DataplaneNameLabel: dp})
}

// watchRequests counts the CertificateRequests with these labels created from
// now on, through a watch.
func watchRequests(t *testing.T, labels client.MatchingLabels) func() int {
	t.Helper()
	times := requestTimes(t, labels)
	return func() int { return len(times()) }
}

// requestsPerDataplane counts, by dataplane, the CertificateRequests with
// these labels created from now on.
func requestsPerDataplane(t *testing.T, labels client.MatchingLabels) func() map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	watchRequestEvents(t, labels, func(ev watch.EventType, cr *cmapi.CertificateRequest) {
		if ev != watch.Added {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		counts[cr.Annotations[kuma.DataplaneNameAnnotation]]++
	})
	return func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(counts)
	}
}

// requestTimes records when each CertificateRequest with these labels is
// created, from now on, through a watch.
func requestTimes(t *testing.T, labels client.MatchingLabels) func() []time.Time {
	t.Helper()
	var mu sync.Mutex
	var created []time.Time
	watchRequestEvents(t, labels, func(ev watch.EventType, _ *cmapi.CertificateRequest) {
		if ev != watch.Added {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		created = append(created, time.Now())
	})
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(created)
	}
}

// watchRequestEvents calls seen for each CertificateRequest with these labels
// created or deleted from now on, until the test ends.
func watchRequestEvents(t *testing.T, labels client.MatchingLabels, seen func(watch.EventType, *cmapi.CertificateRequest)) {
	t.Helper()
	w, err := client.NewWithWatch(testEnv.cluster.Config, client.Options{Scheme: app.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	watcher, err := w.Watch(ctx, &cmapi.CertificateRequestList{}, client.InNamespace(systemNamespace), labels)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range watcher.ResultChan() {
			if cr, ok := ev.Object.(*cmapi.CertificateRequest); ok && (ev.Type == watch.Added || ev.Type == watch.Deleted) {
				seen(ev.Type, cr)
			}
		}
	}()
	t.Cleanup(func() { watcher.Stop(); cancel() })
}

// requestsOf lists the CertificateRequests of a dataplane.
func requestsOf(t *testing.T, ns, dp string) []cmapi.CertificateRequest {
	t.Helper()
	return listRequests(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: ns, kuma.DataplaneNameLabel: dp})
}

func listRequests(t *testing.T, labels client.MatchingLabels) []cmapi.CertificateRequest {
	t.Helper()
	var list cmapi.CertificateRequestList
	if err := testEnv.cluster.Client.List(context.Background(), &list, client.InNamespace(systemNamespace), labels); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func objectMeta(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// reconciles reads controller-runtime's count of the dataplane reconciles
// in this process.
func reconciles(t *testing.T) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "dataplane-certificates" {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// metricExists tells whether this process exports a metric family.
func metricExists(t *testing.T, name string) bool {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return true
		}
	}
	return false
}

// gauge reads a gauge of this process with these labels.
func gauge(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue metric
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// webhookCAs trusts the webhook's serving certificate.
func webhookCAs(t *testing.T) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(testEnv.cluster.WebhookCA) {
		t.Fatal("no webhook CA")
	}
	return pool
}

// webhookClient calls the webhook server as the API server would.
func webhookClient(t *testing.T, protos []string) *http.Client {
	t.Helper()
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: webhookCAs(t), NextProtos: protos},
	}}
}

// postReview posts a body and decodes the AdmissionReview answer.
func postReview(t *testing.T, c *http.Client, url, contentType, body string) (int, admissionv1.AdmissionReview) {
	t.Helper()
	resp, err := c.Post(url, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		t.Fatalf("HTTP %d, not an AdmissionReview: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, review
}

// warningRecorder collects the warnings the API server sends back.
type warningRecorder struct {
	mu       sync.Mutex
	warnings []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.warnings = append(w.warnings, text)
}

func (w *warningRecorder) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.warnings)
}

// clientWithWarnings is an admin client that hands warnings to w.
func clientWithWarnings(t *testing.T, w rest.WarningHandler) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(testEnv.cluster.Config)
	cfg.WarningHandler = w
	c, err := client.New(cfg, client.Options{Scheme: app.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// backoffGaps checks that requests made at times back off: between least and
// most of them, each gap at most maxGap and none shorter than the one before
// (give or take scheduling). It returns the gaps.
func backoffGaps(t *testing.T, times []time.Time, least, most int, maxGap time.Duration) []time.Duration {
	t.Helper()
	var gaps []time.Duration
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]).Round(10*time.Millisecond))
	}
	t.Logf("%d requests, apart by %v", len(times), gaps)
	if len(times) < least || len(times) > most {
		t.Errorf("%d requests, want %d to %d", len(times), least, most)
	}
	for i, g := range gaps {
		if g > maxGap+time.Second {
			t.Errorf("gap %d is %s, over the %s cap", i, g, maxGap)
		}
		if i > 0 && g < gaps[i-1]-300*time.Millisecond {
			t.Errorf("gaps %v shrink: the backoff is not exponential", gaps)
		}
	}
	return gaps
}
