package bench

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	// cert-manager's controllers of Certificates, for baseline (b).
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
)

// signerControllers are cert-manager's controllers of CertificateRequests
// for a CA ClusterIssuer; certificateControllers add those of Certificates.
var (
	signerControllers      = []string{"issuers", "clusterissuers", "certificaterequests-approver", "certificaterequests-issuer-ca"}
	certificateControllers = append(slices.Clone(signerControllers),
		"certificates-trigger", "certificates-issuing", "certificates-key-manager",
		"certificates-request-manager", "certificates-readiness", "certificates-revision-manager")
)

var clusterIssuer = cmmeta.IssuerReference{Name: "mesh-ca", Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"}

// identity is dataplane i's: the URI SANs meshcert gives it.
func identity(i int) []string {
	tags, _ := kuma.ParseDataplaneTags(kumaDataplaneSpec(benchNamespace, fmt.Sprintf("web-%d", i), i))
	uris, _ := kuma.IdentityURIs("bench", fmt.Sprintf("web-%d", i), tags, nil)
	return pki.URLsToString(uris)
}

// bareCSRs makes the CSRs of n bare CertificateRequests, request i for
// uris(i), before any is timed.
func bareCSRs(n int, uris func(int) []string, usages []cmapi.KeyUsage) ([][]byte, error) {
	csrs := make([][]byte, n)
	err := parallel(n, func(i int) error {
		key, err := pki.GenerateECPrivateKey(pki.ECCurve256)
		if err != nil {
			return err
		}
		tmpl, err := pki.GenerateCSR(&cmapi.Certificate{Spec: cmapi.CertificateSpec{URIs: uris(i), Usages: usages,
			PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256}}})
		if err != nil {
			return err
		}
		der, err := pki.EncodeCSR(tmpl, key)
		csrs[i] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		return err
	})
	return csrs, err
}

// parallel runs fn for 0..n-1 on 32 workers, as a busy client would, and
// returns the first error.
func parallel(n int, fn func(i int) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	next := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// follow calls seen with each object of obj's type in ns that an informer
// (which relists and rewatches as needed) adds or updates, until ctx ends.
// It returns once the informer has synced.
func follow(ctx context.Context, e *env, obj client.Object, ns string, seen func(client.Object)) error {
	c, err := crcache.New(e.c.Config, crcache.Options{Scheme: e.c.Client.Scheme(), DefaultNamespaces: map[string]crcache.Config{ns: {}}})
	if err != nil {
		return err
	}
	informer, err := c.GetInformer(ctx, obj)
	if err != nil {
		return err
	}
	handle := func(o any) {
		if obj, ok := o.(client.Object); ok {
			seen(obj)
		}
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, o any) { handle(o) }}); err != nil {
		return err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return errors.New("the informer did not sync")
	}
	return nil
}

// nameTimes records when each name was first seen.
type nameTimes struct {
	mu    sync.Mutex
	times map[string]time.Time
}

func (t *nameTimes) see(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.times[name]; !ok {
		t.times[name] = time.Now()
	}
}

func (t *nameTimes) get(name string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.times[name]
	return at, ok
}

// last is when the last name was first seen.
func (t *nameTimes) last() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var last time.Time
	for _, at := range t.times {
		last = latest(last, at)
	}
	return last
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (t *nameTimes) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.times)
}

func ready(conds []cmapi.CertificateRequestCondition) bool {
	return slices.ContainsFunc(conds, func(c cmapi.CertificateRequestCondition) bool {
		return c.Type == cmapi.CertificateRequestConditionReady && c.Status == cmmeta.ConditionTrue
	})
}

// timeCreates creates n objects in parallel with create, and returns the
// time from the first create until done says all n objects of watch's type
// in ns are done, or until limit, with how many were done by then.
func (e *env) timeCreates(ctx context.Context, watch client.Object, ns string, n int, limit time.Duration, done func(client.Object) bool, create func(i int) error) (time.Duration, int, error) {
	followCtx, stop := context.WithCancel(ctx)
	defer stop()
	finished := &nameTimes{times: map[string]time.Time{}}
	if err := follow(followCtx, e, watch, ns, func(o client.Object) {
		if done(o) {
			finished.see(o.GetName())
		}
	}); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := parallel(n, create); err != nil {
		return 0, 0, err
	}
	for finished.count() < n && time.Since(start) < limit {
		time.Sleep(10 * time.Millisecond)
	}
	if done := finished.count(); done < n {
		return time.Since(start), done, nil
	}
	return finished.last().Sub(start), n, nil
}

// timeInCluster starts a cluster with cert-manager's controllers given and
// times creates in its namespace ns (timeCreates).
func timeInCluster(ctx context.Context, controllers []string, ns string, n int, limit time.Duration, watch client.Object, done func(client.Object) bool, create func(c client.Client, i int) error) (time.Duration, int, error) {
	e, err := newEnv(ctx, localcluster.Options{}, controllers...)
	if err != nil {
		return 0, 0, err
	}
	defer e.stop()
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, ns); err != nil {
		return 0, 0, err
	}
	return e.timeCreates(ctx, watch, ns, n, limit, done, func(i int) error { return create(e.c.Client, i) })
}

// signerAlone is baseline (a): cert-manager's CA signer signing n bare
// CertificateRequests, their CSRs made beforehand: the ceiling of issuance.
func signerAlone(ctx context.Context, n int) (time.Duration, error) {
	csrs, err := bareCSRs(n, identity, issuance.WorkloadUsages)
	if err != nil {
		return 0, err
	}
	took, done, err := timeInCluster(ctx, signerControllers, "bench-signer", n, 30*time.Minute, &cmapi.CertificateRequest{},
		func(o client.Object) bool { return ready(o.(*cmapi.CertificateRequest).Status.Conditions) },
		func(c client.Client, i int) error {
			return c.Create(ctx, &cmapi.CertificateRequest{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: "bench-signer"},
				Spec: cmapi.CertificateRequestSpec{Request: csrs[i], IssuerRef: clusterIssuer,
					Duration: &metav1.Duration{Duration: 24 * time.Hour}, Usages: issuance.WorkloadUsages},
			})
		})
	if err == nil && done < n {
		err = fmt.Errorf("%d of %d signed after %s", done, n, took)
	}
	return took, err
}

// certificates is baseline (b): the same identities as cert-manager
// Certificates, through cert-manager's own certificates controllers: what a
// user would do without meshcert. It is slow: after limit, it stops, and
// says how many were ready by then.
func certificates(ctx context.Context, n int, limit time.Duration) (time.Duration, int, error) {
	took, done, err := timeInCluster(ctx, certificateControllers, "bench-certificates", n, limit, &cmapi.Certificate{},
		func(o client.Object) bool {
			return slices.ContainsFunc(o.(*cmapi.Certificate).Status.Conditions, func(c cmapi.CertificateCondition) bool {
				return c.Type == cmapi.CertificateConditionReady && c.Status == cmmeta.ConditionTrue
			})
		},
		func(c client.Client, i int) error {
			return c.Create(ctx, &cmapi.Certificate{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: "bench-certificates"},
				Spec: cmapi.CertificateSpec{
					SecretName: fmt.Sprintf("web-%d-mtls", i), URIs: identity(i), IssuerRef: clusterIssuer,
					Duration: &metav1.Duration{Duration: 24 * time.Hour}, Usages: issuance.WorkloadUsages,
					PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
				},
			})
		})
	if err == nil && done == 0 {
		err = fmt.Errorf("no Certificate ready after %s", limit)
	}
	return took, done, err
}

// meshcertRun is meshcert, as a process of its own, serving a mesh.
type meshcertRun struct {
	e       *env
	p       *localcluster.Process
	metrics string // address
	log     string
	// peakRSS is its highest resident memory, in bytes.
	peakRSS uint64
}

const benchNamespace = "bench"

// startMeshcert starts a cluster and a meshcert process serving mesh bench,
// whose certificates expire after expiration.
func startMeshcert(ctx context.Context, dir, expiration string, extra ...string) (*meshcertRun, error) {
	e, err := newEnv(ctx, localcluster.Options{}, signerControllers...)
	if err != nil {
		return nil, err
	}
	r := &meshcertRun{e: e, log: filepath.Join(dir, "meshcert.log")}
	if err := r.start(ctx, expiration, extra); err != nil {
		r.stop()
		return nil, err
	}
	go r.sampleMemory(ctx)
	return r, nil
}

func (r *meshcertRun) start(ctx context.Context, expiration string, extra []string) error {
	if err := localcluster.EnsureNamespace(ctx, r.e.c.Client, benchNamespace); err != nil {
		return err
	}
	spec, _ := json.Marshal(map[string]any{"mtls": map[string]any{"enabledBackend": "cm", "backends": []any{map[string]any{
		"name": "cm", "type": "certmanager", "dpCert": map[string]any{"rotation": map[string]any{"expiration": expiration}},
		"conf": map[string]any{"issuerRef": map[string]any{"name": "mesh-ca", "kind": "ClusterIssuer"}},
	}}}})
	if err := r.e.c.Client.Create(ctx, &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: "bench"}, Spec: spec}); err != nil {
		return err
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return err
	}
	r.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"--enable-webhook=false", "--system-namespace=" + systemNamespace,
		"--dataplane-namespaces=" + benchNamespace, "--metrics-bind-address=" + r.metrics}, extra...)
	r.p, err = r.e.c.StartProcess(r.log, args...)
	return err
}

func (r *meshcertRun) stop() {
	if r.p != nil {
		r.p.Kill()
	}
	r.e.stop()
}

// sampleMemory records the process's peak resident memory.
func (r *meshcertRun) sampleMemory(ctx context.Context) {
	for !r.p.Exited() && ctx.Err() == nil {
		if rss, err := residentBytes(r.p.Pid()); err == nil {
			r.peakRSS = max(r.peakRSS, rss)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// createDataplanes creates n dataplanes of mesh bench, and waits until each
// has its Secret. It returns the time from the first create.
func (r *meshcertRun) createDataplanes(ctx context.Context, n int) (time.Duration, error) {
	took, done, err := r.e.timeCreates(ctx, &corev1.Secret{}, benchNamespace, n, 60*time.Minute,
		func(o client.Object) bool { return len(o.(*corev1.Secret).Data[corev1.TLSCertKey]) > 0 },
		func(i int) error {
			return r.e.c.Client.Create(ctx, &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: benchNamespace},
				Mesh: "bench", Spec: kumaDataplaneSpec(benchNamespace, fmt.Sprintf("web-%d", i), i)})
		})
	if err == nil && done < n {
		err = fmt.Errorf("%d of %d Secrets after %s", done, n, took)
	}
	return took, err
}

// writes counts meshcert's API requests that change something.
func (r *meshcertRun) writes() (float64, error) {
	m, err := scrape(r.metrics, "rest_client_requests_total")
	return writesOf(m), err
}
