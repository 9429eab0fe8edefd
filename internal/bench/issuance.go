package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
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
	certificateControllers = append(append([]string(nil), signerControllers...),
		"certificates-trigger", "certificates-issuing", "certificates-key-manager",
		"certificates-request-manager", "certificates-readiness", "certificates-revision-manager")
)

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
		csrs[i] = pemCSR(der)
		return err
	})
	return csrs, err
}

var clusterIssuer = cmmeta.IssuerReference{Name: "mesh-ca", Kind: cmapi.ClusterIssuerKind, Group: "cert-manager.io"}

// parallel runs fn for 0..n-1 on a few workers, as a busy client would.
func parallel(n int, fn func(i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	next := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// countUntil follows one type's objects in a namespace through an informer
// (which relists and rewatches as needed) and returns once done says n of
// them are done.
func countUntil(ctx context.Context, e *env, obj client.Object, ns string, n int, timeout time.Duration, done func(client.Object) bool) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := crcache.New(e.c.Config, crcache.Options{Scheme: e.c.Client.Scheme(), DefaultNamespaces: map[string]crcache.Config{ns: {}}})
	if err != nil {
		return 0, err
	}
	informer, err := c.GetInformer(ctx, obj)
	if err != nil {
		return 0, err
	}
	var mu sync.Mutex
	finished := map[string]bool{}
	all := make(chan struct{})
	check := func(o any) {
		obj, ok := o.(client.Object)
		if !ok || !done(obj) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !finished[obj.GetName()] {
			finished[obj.GetName()] = true
			if len(finished) == n {
				close(all)
			}
		}
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: check, UpdateFunc: func(_, o any) { check(o) }}); err != nil {
		return 0, err
	}
	go func() { _ = c.Start(ctx) }()
	select {
	case <-all:
		return n, nil
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		return len(finished), fmt.Errorf("%d of %d done after %s", len(finished), n, timeout)
	}
}

func ready(conds []cmapi.CertificateRequestCondition) bool {
	for _, c := range conds {
		if c.Type == cmapi.CertificateRequestConditionReady && c.Status == cmmeta.ConditionTrue {
			return true
		}
	}
	return false
}

// signerAlone is baseline (a): cert-manager's CA signer signing n bare
// CertificateRequests, their CSRs made beforehand: the ceiling of issuance.
func signerAlone(ctx context.Context, n int, profileDir string) (time.Duration, string, error) {
	e, err := newEnv(ctx, localcluster.Options{}, signerControllers...)
	if err != nil {
		return 0, "", err
	}
	defer e.stop()
	const ns = "bench-signer"
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, ns); err != nil {
		return 0, "", err
	}
	csrs, err := bareCSRs(n, identity, issuance.WorkloadUsages)
	if err != nil {
		return 0, "", err
	}
	t, err := e.timeCreates(ctx, timedCreates{
		watch: &cmapi.CertificateRequest{}, ns: ns, n: n, limit: 30 * time.Minute,
		done: func(o client.Object) bool { return ready(o.(*cmapi.CertificateRequest).Status.Conditions) },
		create: func(i int) error {
			return e.c.Client.Create(ctx, &cmapi.CertificateRequest{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: ns},
				Spec: cmapi.CertificateRequestSpec{Request: csrs[i], IssuerRef: clusterIssuer,
					Duration: &metav1.Duration{Duration: 24 * time.Hour}, Usages: issuance.WorkloadUsages},
			})
		},
		profileDir: profileDir, profileName: fmt.Sprintf("p3-a-%d", n),
	})
	if err == nil && t.ready < n {
		err = fmt.Errorf("%d of %d signed after %s", t.ready, n, t.took)
	}
	return t.took, t.cost, err
}

// certificates is baseline (b): the same identities as cert-manager
// Certificates, through cert-manager's own certificates controllers: what a
// user would do without meshcert. It is slow: after limit, it stops, and
// says how many were ready by then.
func certificates(ctx context.Context, n int, limit time.Duration, profileDir string) (time.Duration, int, string, error) {
	e, err := newEnv(ctx, localcluster.Options{}, certificateControllers...)
	if err != nil {
		return 0, 0, "", err
	}
	defer e.stop()
	const ns = "bench-certificates"
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, ns); err != nil {
		return 0, 0, "", err
	}
	t, err := e.timeCreates(ctx, timedCreates{
		watch: &cmapi.Certificate{}, ns: ns, n: n, limit: limit,
		done: func(o client.Object) bool {
			for _, c := range o.(*cmapi.Certificate).Status.Conditions {
				if c.Type == cmapi.CertificateConditionReady && c.Status == cmmeta.ConditionTrue {
					return true
				}
			}
			return false
		},
		create: func(i int) error {
			return e.c.Client.Create(ctx, &cmapi.Certificate{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: ns},
				Spec: cmapi.CertificateSpec{
					SecretName: fmt.Sprintf("web-%d-mtls", i), URIs: identity(i), IssuerRef: clusterIssuer,
					Duration: &metav1.Duration{Duration: 24 * time.Hour}, Usages: issuance.WorkloadUsages,
					PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
				},
			})
		},
		profileDir: profileDir, profileName: fmt.Sprintf("p3-b-%d", n),
	})
	if err == nil && t.ready == 0 {
		err = fmt.Errorf("no Certificate ready after %s", limit)
	}
	return t.took, t.ready, t.cost, err
}

// meshcertRun is meshcert, as a process of its own, serving a mesh.
type meshcertRun struct {
	e       *env
	p       *localcluster.Process
	metrics string
	log     string
	pprof   string // address
	// peakRSS is the resident memory when it was highest.
	peakRSS  residentSet
	peakHeap float64
	// cost is the CPU each process used to issue the dataplanes, and
	// kube-apiserver's writes.
	cost string
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
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, benchNamespace); err != nil {
		r.stop()
		return nil, err
	}
	spec, _ := json.Marshal(map[string]any{"mtls": map[string]any{"enabledBackend": "cm", "backends": []any{map[string]any{
		"name": "cm", "type": "certmanager", "dpCert": map[string]any{"rotation": map[string]any{"expiration": expiration}},
		"conf": map[string]any{"issuerRef": map[string]any{"name": "mesh-ca", "kind": "ClusterIssuer"}},
	}}}})
	if err := e.c.Client.Create(ctx, &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: "bench"}, Spec: spec}); err != nil {
		r.stop()
		return nil, err
	}
	port, err := localcluster.FreePort()
	if err != nil {
		r.stop()
		return nil, err
	}
	r.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	if port, err = localcluster.FreePort(); err != nil {
		r.stop()
		return nil, err
	}
	r.pprof = fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"--enable-webhook=false", "--system-namespace=" + systemNamespace,
		"--dataplane-namespaces=" + benchNamespace, "--metrics-bind-address=" + r.metrics, "--pprof-bind-address=" + r.pprof}, extra...)
	if r.p, err = e.c.StartProcess(r.log, args...); err != nil {
		r.stop()
		return nil, err
	}
	go r.sampleMemory(ctx)
	return r, nil
}

func (r *meshcertRun) stop() {
	if r.p != nil {
		r.p.Kill()
	}
	r.e.stop()
}

// sampleMemory records the process's peak resident set and Go heap.
func (r *meshcertRun) sampleMemory(ctx context.Context) {
	for !r.p.Exited() && ctx.Err() == nil {
		if rss, err := readResident(r.p.Pid()); err == nil && rss.total > r.peakRSS.total {
			r.peakRSS = rss
		}
		if m, err := scrape(r.metrics); err == nil && m["go_memstats_heap_inuse_bytes"] > r.peakHeap {
			r.peakHeap = m["go_memstats_heap_inuse_bytes"]
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// createDataplanes creates n dataplanes of mesh bench, and waits until each
// has its Secret. It returns the time from the first create.
func (r *meshcertRun) createDataplanes(ctx context.Context, n int, profileDir string) (time.Duration, error) {
	t, err := r.e.timeCreates(ctx, timedCreates{
		watch: &corev1.Secret{}, ns: benchNamespace, n: n, limit: 60 * time.Minute,
		done: func(o client.Object) bool { return len(o.(*corev1.Secret).Data[corev1.TLSCertKey]) > 0 },
		create: func(i int) error {
			return r.e.c.Client.Create(ctx, &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: benchNamespace},
				Mesh: "bench", Spec: kumaDataplaneSpec(benchNamespace, fmt.Sprintf("web-%d", i), i)})
		},
		meshcertPID: r.p.Pid(), meshcertPprof: r.pprof,
		profileDir: profileDir, profileName: fmt.Sprintf("p3-meshcert-%d", n),
	})
	if err == nil && t.ready < n {
		err = fmt.Errorf("%d of %d Secrets after %s", t.ready, n, t.took)
	}
	r.cost = t.cost
	return t.took, err
}

// timedCreates is one timed measure: n objects created in parallel, and a
// watch that counts those done.
type timedCreates struct {
	watch  client.Object // the type whose objects are counted, in ns
	ns     string
	n      int
	limit  time.Duration
	done   func(client.Object) bool
	create func(i int) error
	// meshcertPID and meshcertPprof, if set, add meshcert's process to the
	// CPU meter and to the profiles.
	meshcertPID   int
	meshcertPprof string
	// profileDir, if set, receives CPU profiles named after profileName.
	profileDir, profileName string
}

type timed struct {
	took  time.Duration
	ready int
	// cost is the CPU each process used, and kube-apiserver's writes.
	cost string
}

// timeCreates runs t: it returns the time from the first create until the
// last object is done, or until the limit, with how many were done by then
// and the CPU each process used.
func (e *env) timeCreates(ctx context.Context, t timedCreates) (timed, error) {
	type outcome struct {
		ready int
		err   error
	}
	doneCh := make(chan outcome, 1)
	go func() {
		ready, err := countUntil(ctx, e, t.watch, t.ns, t.n, t.limit, t.done)
		doneCh <- outcome{ready, err}
	}()
	time.Sleep(200 * time.Millisecond) // let the watch start
	var meshcert map[string][]int
	if t.meshcertPID != 0 {
		meshcert = map[string][]int{"meshcert": {t.meshcertPID}}
	}
	cpu := e.cpuMeter(meshcert)
	writes := e.countWrites(ctx)
	profiled := e.profileAPIServer(ctx, t.profileDir, t.profileName+"-kube-apiserver", t.n)
	profiledMeshcert := func() error { return nil }
	if t.profileDir != "" && t.meshcertPprof != "" {
		profiledMeshcert = profile(ctx, http.DefaultClient, "http://"+t.meshcertPprof, filepath.Join(t.profileDir, t.profileName+"-meshcert.pprof"), t.n)
	}
	start := time.Now()
	if err := parallel(t.n, t.create); err != nil {
		return timed{}, err
	}
	o := <-doneCh
	result := timed{took: time.Since(start), ready: o.ready, cost: cpu.String() + "; " + writes.perIdentity(ctx, max(o.ready, 1))}
	if o.err != nil && o.ready == 0 {
		return result, o.err
	}
	return result, errors.Join(profiled(), profiledMeshcert())
}

// writes counts meshcert's API requests that change something.
func (r *meshcertRun) writes() (float64, error) {
	m, err := scrapeAll(r.metrics, "rest_client_requests_total")
	if err != nil {
		return 0, err
	}
	return writesOf(growthBy(nil, m, "method")), nil
}

func pemCSR(der []byte) []byte {
	return pemEncode("CERTIFICATE REQUEST", der)
}
