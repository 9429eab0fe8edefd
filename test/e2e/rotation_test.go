package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/test/harness"
)

// rotationMesh is a Mesh with certmanager backends named after their CA
// Issuers, none with caCert: the roots come from status.ca.
func rotationMesh(name, enabled string, backends ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: %s\nspec:\n  mtls:\n    enabledBackend: %s\n    backends:\n", name, enabled)
	for _, backend := range backends {
		issuer := map[string]string{"ca-1": "mesh-ca", "ca-2": "other-ca"}[backend]
		fmt.Fprintf(&b, "      - name: %s\n        type: certmanager\n        conf:\n          issuerRef:\n            name: %s\n", backend, issuer)
	}
	return b.String()
}

// TestCARotation walks a mesh through the documented three-step CA rotation
// with two independent CA Issuers, and checks that mTLS never breaks: for
// the dataplanes, and for clients outside the mesh that get the published
// roots through trust-manager's own Bundle controller.
func TestCARotation(t *testing.T) {
	startReconciler(t, func(c *config.Config) {
		c.SwitchWindow = 6 * time.Second
		c.PublishTrustBundles = true
	})
	const ns, mesh, n = "ca-rotation", "ca-rotation", 6
	const clients = "ca-rotation-clients"
	trustCtx, stopTrustManager := context.WithCancel(context.Background())
	t.Cleanup(stopTrustManager)
	if err := harness.StartTrustManager(trustCtx, testEnv.cluster, systemNamespace, logr.Discard()); err != nil {
		t.Fatal(err)
	}
	createObject(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: clients, Labels: map[string]string{"meshcert.io/trust": mesh}}})
	if _, stderr, err := kubectlIn(context.Background(), nil, "apply", "-f", "trust-manager/bundle.yaml"); err != nil {
		t.Fatalf("applying the Bundle: %v: %s", err, stderr)
	}
	t.Cleanup(func() { _, _, _ = kubectlIn(context.Background(), nil, "delete", "-f", "trust-manager/bundle.yaml") })
	meshInNamespace(t, ns, mesh, rotationMesh(mesh, "ca-1", "ca-1"))
	for i := range n {
		createObject(t, newDataplane(ns, fmt.Sprintf("web-%d", i), mesh, map[string]string{"kuma.io/service": fmt.Sprintf("web-%d", i)}))
	}
	secrets := func() []*corev1.Secret {
		var out []*corev1.Secret
		for i := range n {
			out = append(out, secretOf(t, ns, fmt.Sprintf("web-%d", i)))
		}
		return out
	}
	serials := func() []string {
		var out []string
		for _, s := range secrets() {
			out = append(out, leafOf(t, s).SerialNumber.String())
		}
		return out
	}
	rootsAre := func(want ...*x509.Certificate) func() bool {
		return func() bool {
			for _, s := range secrets() {
				if s == nil {
					return false
				}
				got := rootsOf(t, s)
				if len(got) != len(want) || !slices.ContainsFunc(got, want[0].Equal) || !slices.ContainsFunc(got, want[len(want)-1].Equal) {
					return false
				}
			}
			return true
		}
	}
	// The roots in a ConfigMap's ca.crt are exactly want.
	holds := func(key client.ObjectKey, label string, want ...*x509.Certificate) bool {
		var cm corev1.ConfigMap
		if err := testEnv.cluster.Client.Get(context.Background(), key, &cm); err != nil {
			return false
		}
		roots, err := pki.DecodeX509CertificateSetBytes([]byte(cm.Data["ca.crt"]))
		return err == nil && (label == "" || cm.Labels[label] == "true") && len(roots) == len(want) &&
			!slices.ContainsFunc(want, func(w *x509.Certificate) bool { return !slices.ContainsFunc(roots, w.Equal) })
	}
	// The published roots, for clients outside the mesh, are exactly the
	// dataplanes', in the system namespace and, through trust-manager, in
	// the clients' namespace.
	published := func(want ...*x509.Certificate) func() bool {
		return func() bool {
			return holds(client.ObjectKey{Namespace: systemNamespace, Name: dataplane.TrustBundleName(mesh)}, dataplane.TrustBundleLabel, want...)
		}
	}
	distributed := func(want ...*x509.Certificate) func() bool {
		return func() bool {
			return holds(client.ObjectKey{Namespace: clients, Name: "ca-rotation-roots"}, "", want...)
		}
	}
	logDistributed := func(when string) {
		out, _, _ := kubectlIn(context.Background(), nil, "get", "configmap", "-n", clients, "ca-rotation-roots", "-o", `jsonpath={.data.ca\.crt}`)
		roots, _ := pki.DecodeX509CertificateSetBytes([]byte(out))
		var subjects []string
		for _, r := range roots {
			subjects = append(subjects, r.Subject.String())
		}
		t.Logf("%s: trust-manager's %s/ca-rotation-roots holds %v", when, clients, subjects)
	}
	waitFor(t, 30*time.Second, "every dataplane's certificate from ca-1", rootsAre(testEnv.ca.Cert))
	waitFor(t, 10*time.Second, "ca-1's root published", published(testEnv.ca.Cert))
	waitFor(t, 10*time.Second, "ca-1's root distributed by trust-manager", distributed(testEnv.ca.Cert))
	logDistributed("before the rotation")
	before := serials()
	beforeSecrets := secrets()
	probes := countProbes(t, mesh)

	t.Run("step 1: add ca-2; every dataplane trusts both roots, none is reissued", func(t *testing.T) {
		applyMesh(t, rotationMesh(mesh, "ca-1", "ca-1", "ca-2"))
		waitFor(t, 30*time.Second, "both roots in every ca.crt", rootsAre(testEnv.ca.Cert, testEnv.other.Cert))
		waitFor(t, 10*time.Second, "both roots published", published(testEnv.ca.Cert, testEnv.other.Cert))
		waitFor(t, 10*time.Second, "both roots distributed by trust-manager", distributed(testEnv.ca.Cert, testEnv.other.Cert))
		if got := serials(); !slices.Equal(got, before) {
			t.Errorf("leaves were reissued: serials %v -> %v", before, got)
		}
		// The bundle is patched alone: the key, the chain and every
		// annotation, which the compacted cache leaves some of out, stay.
		for i, s := range secrets() {
			was := beforeSecrets[i]
			if !bytes.Equal(s.Data[corev1.TLSPrivateKeyKey], was.Data[corev1.TLSPrivateKeyKey]) || !bytes.Equal(s.Data[corev1.TLSCertKey], was.Data[corev1.TLSCertKey]) {
				t.Errorf("Secret %s: the bundle update changed tls.key or tls.crt", s.Name)
			}
			if !maps.Equal(s.Annotations, was.Annotations) || !maps.Equal(s.Labels, was.Labels) {
				t.Errorf("Secret %s: the bundle update changed its metadata: annotations %v -> %v, labels %v -> %v", s.Name, was.Annotations, s.Annotations, was.Labels, s.Labels)
			}
		}
		if probes() < 1 {
			t.Error("no probe request learned ca-2's root")
		}
		waitFor(t, 10*time.Second, "the probe to be deleted", func() bool { return len(probeRequests(t, mesh)) == 0 })
		if len(eventsFor(t, "Mesh", mesh)["RootLearned"]) == 0 {
			t.Error("no RootLearned event on the Mesh")
		}
	})

	t.Run("step 2: switch to ca-2; every pair of dataplanes keeps verifying", func(t *testing.T) {
		sampler := startPairSampler(t, secrets)
		applyMesh(t, rotationMesh(mesh, "ca-2", "ca-1", "ca-2"))
		waitFor(t, 30*time.Second, "every leaf from ca-2", func() bool {
			for _, s := range secrets() {
				if s.Annotations[kuma.BackendAnnotation] != "ca-2" || !issuedBy(leafOf(t, s), testEnv.other.Cert) {
					return false
				}
			}
			return true
		})
		if !published(testEnv.ca.Cert, testEnv.other.Cert)() {
			t.Error("during the overlap, the published roots are not both")
		}
		if !distributed(testEnv.ca.Cert, testEnv.other.Cert)() {
			t.Error("during the overlap, the roots trust-manager distributes are not both")
		}
		logDistributed("after the switch")
		samples, failures := sampler.stop()
		t.Logf("%d samples of all %d pairs during the switch", samples, n*(n-1)/2)
		if samples < 5 {
			t.Errorf("only %d samples; the check proves little", samples)
		}
		for _, f := range failures {
			t.Error(f)
		}
		var issued []time.Time
		for _, s := range secrets() {
			issued = append(issued, leafOf(t, s).NotBefore)
		}
		if spread := slices.MaxFunc(issued, time.Time.Compare).Sub(slices.MinFunc(issued, time.Time.Compare)); spread < 2*time.Second {
			t.Errorf("the %d reissues came within %s; want them spread over the 6s window", n, spread)
		}
		events := eventsFor(t, "Mesh", mesh)
		for _, reason := range []string{"BackendSwitchStarted", "BackendSwitchProgress", "BackendSwitchComplete"} {
			if len(events[reason]) == 0 {
				t.Errorf("no %s event on the Mesh; events: %v", reason, events)
			}
		}
		if got := gauge(t, "meshcert_certificates", map[string]string{"mesh": mesh, "backend": "ca-2"}); got != n {
			t.Errorf("meshcert_certificates{backend=ca-2} = %v, want %d", got, n)
		}
	})

	t.Run("step 3: remove ca-1; only its root leaves ca.crt", func(t *testing.T) {
		switched := serials()
		time.Sleep(time.Second) // Let the webhook's cache see the last Secret.
		run := applyWithOutput(t, rotationMesh(mesh, "ca-2", "ca-2"))
		if strings.Contains(run, "Warning") {
			t.Errorf("removing a backend that issues nothing warned:\n%s", run)
		}
		waitFor(t, 30*time.Second, "only ca-2's root in every ca.crt", rootsAre(testEnv.other.Cert))
		waitFor(t, 10*time.Second, "only ca-2's root published", published(testEnv.other.Cert))
		waitFor(t, 10*time.Second, "only ca-2's root distributed by trust-manager", distributed(testEnv.other.Cert))
		logDistributed("after the rotation")
		if got := serials(); !slices.Equal(got, switched) {
			t.Errorf("leaves were reissued: serials %v -> %v", switched, got)
		}
	})
}

// TestCARotationGuardRails: the webhook rejects a one-step switch to a backend
// added in the same update, and warns when a backend that still issued
// current certificates is removed.
func TestCARotationGuardRails(t *testing.T) {
	startReconciler(t, nil)
	const ns, mesh = "ca-guard", "ca-guard"
	meshInNamespace(t, ns, mesh, rotationMesh(mesh, "ca-1", "ca-1"))
	for i := range 3 {
		createObject(t, newDataplane(ns, fmt.Sprintf("web-%d", i), mesh, map[string]string{"kuma.io/service": "web"}))
	}
	for i := range 3 {
		waitSecret(t, ns, fmt.Sprintf("web-%d", i), 20*time.Second, nil)
	}
	time.Sleep(time.Second) // Let the webhook's cache see the Secrets.

	stdout, stderr, err := testEnv.cluster.Kubectl(context.Background(), []byte(rotationMesh(mesh, "ca-2", "ca-1", "ca-2")), "apply", "-f", "-")
	if err == nil {
		t.Errorf("a one-step switch to a new backend was accepted:\n%s", stdout)
	}
	if want := `spec.mtls.enabledBackend: Forbidden: backend "ca-2" is added by this same update`; !strings.Contains(stderr, want) {
		t.Errorf("the rejection lacks %q:\n%s", want, stderr)
	}

	applyMesh(t, rotationMesh(mesh, "ca-1", "ca-1", "ca-2"))
	run := applyWithOutput(t, rotationMesh(mesh, "ca-2", "ca-2"))
	if want := "Warning: spec.mtls.backends: backend ca-1 still issued the certificates of 3 dataplanes: removing it now makes their peers reject them until they are reissued"; !strings.Contains(run, want) {
		t.Errorf("no warning for the premature removal:\n%s", run)
	}
}

// issuedBy tells whether leaf verifies against root alone.
func issuedBy(leaf, root *x509.Certificate) bool {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// pairSampler checks, over and over until stopped, that every dataplane's
// certificate verifies against every other dataplane's ca.crt: the mTLS
// handshake of each pair, both ways.
type pairSampler struct {
	done     chan struct{}
	wg       sync.WaitGroup
	samples  int
	failures []string
}

func startPairSampler(t *testing.T, secrets func() []*corev1.Secret) *pairSampler {
	p := &pairSampler{done: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			select {
			case <-p.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			all := secrets()
			for i, a := range all {
				for j, b := range all {
					if i == j {
						continue
					}
					if err := verifiesAgainst(a, b); err != nil {
						p.failures = append(p.failures, fmt.Sprintf("%s does not verify against the ca.crt of %s: %v", a.Name, b.Name, err))
					}
				}
			}
			p.samples++
		}
	}()
	return p
}

func (p *pairSampler) stop() (int, []string) {
	close(p.done)
	p.wg.Wait()
	return p.samples, p.failures
}

func verifiesAgainst(a, b *corev1.Secret) error {
	chain, err := pki.DecodeX509CertificateChainBytes(a.Data[corev1.TLSCertKey])
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(b.Data[kuma.CAKey])
	_, err = chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// probeRequests lists the probe requests of a mesh.
func probeRequests(t *testing.T, mesh string) []string {
	t.Helper()
	var names []string
	for _, cr := range listRequests(t, client.MatchingLabels{dataplane.ProbeLabel: "true", kuma.ManagedMeshLabel: mesh}) {
		names = append(names, cr.Name)
	}
	return names
}

// countProbes counts the probe requests created for a mesh from now on.
func countProbes(t *testing.T, mesh string) func() int {
	return watchRequests(t, client.MatchingLabels{dataplane.ProbeLabel: "true", kuma.ManagedMeshLabel: mesh})
}

// applyWithOutput applies a manifest and returns kubectl's output.
func applyWithOutput(t *testing.T, manifest string) string {
	t.Helper()
	stdout, stderr, err := testEnv.cluster.Kubectl(context.Background(), []byte(manifest), "apply", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s%s", err, stdout, stderr)
	}
	return stderr + stdout
}
