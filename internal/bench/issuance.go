package bench

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// timeInCluster starts a cluster with the cert-manager controllers given
// and times there the creates of n objects in namespace ns (timeCreates).
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
		func(o client.Object) bool { return isReady(o.(*cmapi.CertificateRequest).Status.Conditions) },
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

// meshcertRun is meshcert, as a process of its own, serving mesh bench.
type meshcertRun struct {
	e       *env
	p       *localcluster.Process
	dir     string // of its log
	metrics string // address
	// peakRSS is its highest resident memory, in bytes.
	peakRSS atomic.Uint64
}

// startMeshcert starts a cluster and a meshcert process serving mesh bench,
// whose certificates expire after expiration, with the flags given.
func startMeshcert(ctx context.Context, expiration string, flags ...string) (_ *meshcertRun, err error) {
	e, err := newEnv(ctx, localcluster.Options{}, signerControllers...)
	if err != nil {
		return nil, err
	}
	r := &meshcertRun{e: e}
	defer func() {
		if err != nil {
			r.stop()
		}
	}()
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, benchNamespace); err != nil {
		return nil, err
	}
	spec, _ := json.Marshal(map[string]any{"mtls": map[string]any{"enabledBackend": "cm", "backends": []any{map[string]any{
		"name": "cm", "type": "certmanager", "dpCert": map[string]any{"rotation": map[string]any{"expiration": expiration}},
		"conf": map[string]any{"issuerRef": map[string]any{"name": "mesh-ca", "kind": "ClusterIssuer"}},
	}}}})
	if err := e.c.Client.Create(ctx, &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: "bench"}, Spec: spec}); err != nil {
		return nil, err
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	if r.dir, err = os.MkdirTemp("", "meshcert-bench-"); err != nil {
		return nil, err
	}
	r.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"--enable-webhook=false", "--system-namespace=" + systemNamespace,
		"--dataplane-namespaces=" + benchNamespace, "--metrics-bind-address=" + r.metrics}, flags...)
	if r.p, err = e.c.StartProcess(r.log(), args...); err != nil {
		return nil, err
	}
	go func() { // its peak resident memory
		for !r.p.Exited() && ctx.Err() == nil {
			if rss, err := residentBytes(r.p.Pid()); err == nil && rss > r.peakRSS.Load() {
				r.peakRSS.Store(rss)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()
	return r, nil
}

func (r *meshcertRun) log() string { return filepath.Join(r.dir, "meshcert.log") }

func (r *meshcertRun) stop() {
	if r.p != nil {
		r.p.Kill()
	}
	r.e.stop()
	if r.dir != "" {
		_ = os.RemoveAll(r.dir)
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

// secretIssuance is P3, P4 and P5: issuance for N dataplanes against
// cert-manager's signer alone (a) and against cert-manager's own
// Certificates (b); meshcert's peak memory meanwhile; and its API writes at
// rest afterwards.
func secretIssuance(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	// (b) is slow enough at 10,000 to take the whole budget of the run, so
	// it stops after certificatesLimit.
	sizes, idleFor, certificatesLimit, syncPeriod := []int{1000, 10000}, 10*time.Minute, 5*time.Minute, time.Minute
	if o.Quick {
		sizes, idleFor, certificatesLimit, syncPeriod = []int{200}, time.Minute, 2*time.Minute, 15*time.Second
	}
	var rows []Row
	var p5 chan Row
	rss := map[int]uint64{}
	for i, n := range sizes {
		progress("P3: N=%d: (a) cert-manager's CA signer alone", n)
		a, err := signerAlone(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("P3 (a): %w", err)
		}
		progress("P3: N=%d: (b) cert-manager Certificates", n)
		b, bReady, err := certificates(ctx, n, certificatesLimit)
		if err != nil {
			return nil, fmt.Errorf("P3 (b): %w", err)
		}
		bText := rate(b, n)
		if bReady < n {
			// Stopped at the limit: what it would take at its rate so far.
			b = time.Duration(float64(b) * float64(n) / float64(bReady))
			bText = fmt.Sprintf("≥ %s (%d ready after %s)", b.Round(time.Second), bReady, certificatesLimit)
		}
		progress("P3: N=%d: meshcert", n)
		// The first size then stays at rest for P5, resyncing often; the
		// others keep the default, so that resyncs do not weigh on issuance.
		var flags []string
		if i == 0 {
			flags = append(flags, fmt.Sprintf("--sync-period=%s", syncPeriod))
		}
		run, err := startMeshcert(ctx, "24h", flags...)
		if err != nil {
			return nil, err
		}
		ours, err := run.createDataplanes(ctx, n)
		if err != nil {
			run.stop()
			return nil, fmt.Errorf("P3 meshcert: %w", err)
		}
		// P3's target against the signer alone: 0.7× at 1,000; at 10,000,
		// where the API server's writes bound both paths, 0.6×.
		signerTarget := 0.7
		if n >= 10000 {
			signerTarget = 0.6
		}
		ofSigner, thanCertificates := a.Seconds()/ours.Seconds(), b.Seconds()/ours.Seconds()
		time.Sleep(time.Second) // a last sample of the settled process
		rss[n] = run.peakRSS.Load()
		rows = append(rows,
			Row{ID: "P3", Measure: fmt.Sprintf("%d dataplanes to valid Secrets, vs (a) the CA signer alone on bare requests", n),
				Ours: rate(ours, n), Baseline: rate(a, n), Ratio: times(ofSigner),
				Target: fmt.Sprintf("≥ %.1f×", signerTarget), Met: met(ofSigner >= signerTarget)},
			Row{ID: "P3", Measure: fmt.Sprintf("%d dataplanes, vs (b) the same identities as cert-manager Certificates", n),
				Ours: rounded(ours), Baseline: bText,
				Ratio: fmt.Sprintf("%.1f× faster", thanCertificates), Target: "≥ 2× faster", Met: met(thanCertificates >= 2)},
			Row{ID: "P4", Measure: fmt.Sprintf("meshcert's peak resident memory at %d dataplanes", n), Ours: mib(rss[n])})
		if n == 10000 {
			rows[len(rows)-1].Target, rows[len(rows)-1].Met = "≤ 150 MiB", met(rss[n] <= 150<<20)
		}
		if i > 0 {
			run.stop()
			continue
		}
		// P5 runs at rest in the background, while the next sizes run.
		p5 = make(chan Row, 1)
		go func() {
			defer run.stop()
			p5 <- idleWrites(run, n, idleFor, syncPeriod)
		}()
	}
	if lo, hi := sizes[0], sizes[len(sizes)-1]; hi > lo {
		rows = append(rows, Row{ID: "P4", Measure: fmt.Sprintf("meshcert's resident memory per dataplane, from %d to %d", lo, hi),
			Ours: kib(float64(rss[hi])-float64(rss[lo]), float64(hi-lo))})
	}
	if p5 != nil {
		progress("P5: waiting for the measure at rest to end")
		rows = append(rows, <-p5)
	}
	return rows, nil
}

// idleWrites is P5: meshcert's API writes during a steady state with forced
// resyncs, which must make none.
func idleWrites(r *meshcertRun, n int, window, syncPeriod time.Duration) Row {
	row := Row{ID: "P5", Measure: fmt.Sprintf("API writes by meshcert in %s at rest, %d dataplanes, a resync every %s", window, n, syncPeriod), Target: "0"}
	time.Sleep(5 * time.Second) // the last requests' deletions
	before, err1 := scrape(r.metrics)
	time.Sleep(window)
	after, err2 := scrape(r.metrics)
	if err := errors.Join(err1, err2); err != nil {
		row.Ours = "not measured: " + err.Error()
		return row
	}
	writes := after.writes - before.writes
	row.Ours, row.Met = fmt.Sprintf("%.0f (in %.0f reconciles)", writes, after.reconciles-before.reconciles), met(writes == 0)
	return row
}

// renewalStorm is P6: N certificates issued together, so all due together.
// The renewals must spread over time, and meshcert must never wait on a
// client-side rate limit.
func renewalStorm(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	n, expiration, lifetime := 1000, "2m", 2*time.Minute
	if o.Quick {
		n, expiration, lifetime = 200, "1m", time.Minute
	}
	progress("P6: N=%d certificates of %s", n, lifetime)
	run, err := startMeshcert(ctx, expiration)
	if err != nil {
		return nil, err
	}
	defer run.stop()
	// Each Secret's first certificate, and its first renewal.
	followCtx, stopFollowing := context.WithCancel(ctx)
	defer stopFollowing()
	var mu sync.Mutex
	first, renewed := map[string]certSeen{}, map[string]certSeen{}
	if err := follow(followCtx, run.e, &corev1.Secret{}, benchNamespace, func(o client.Object) {
		chain, err := pki.DecodeX509CertificateChainBytes(o.(*corev1.Secret).Data[corev1.TLSCertKey])
		if err != nil {
			return
		}
		seen := certSeen{serial: chain[0].SerialNumber.String(), notBefore: chain[0].NotBefore, observed: time.Now()}
		mu.Lock()
		defer mu.Unlock()
		if f, ok := first[o.GetName()]; !ok {
			first[o.GetName()] = seen
		} else if _, ok := renewed[o.GetName()]; !ok && f.serial != seen.serial {
			renewed[o.GetName()] = seen
		}
	}); err != nil {
		return nil, err
	}
	if _, err := run.createDataplanes(ctx, n); err != nil {
		return nil, err
	}
	renewedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(renewed) }
	for deadline := time.Now().Add(lifetime + 2*time.Minute); renewedCount() < n; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("P6: %d of %d certificates renewed within %s", renewedCount(), n, lifetime+2*time.Minute)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var issued, renewedAt []time.Time
	var fractions []float64 // when in its lifetime each renewal came
	for name, r := range renewed {
		issued = append(issued, first[name].notBefore)
		fractions = append(fractions, float64(r.notBefore.Sub(first[name].notBefore))/float64(lifetime))
		renewedAt = append(renewedAt, r.observed)
	}
	slices.Sort(fractions)
	throttled := strings.Count(localcluster.Logs(run.log()), "client-side throttling")
	return []Row{{
		ID:      "P6",
		Measure: fmt.Sprintf("renewal storm: %d certificates of %s, issued within %s", n, lifetime, rounded(slices.MaxFunc(issued, time.Time.Compare).Sub(slices.MinFunc(issued, time.Time.Compare)))),
		Ours:    fmt.Sprintf("renewed %s; %d client-side throttling waits", spread(fractions, renewedAt), throttled),
		Target:  "spread over time; no throttling", Met: met(percentile(fractions, 0.95)-percentile(fractions, 0.05) >= 0.05 && throttled == 0),
	}}, nil
}

type certSeen struct {
	serial    string
	notBefore time.Time
	observed  time.Time
}

// spread says when in their lifetime renewals came (p5–p95, as fractions
// of it) and the most in one second.
func spread(fractions []float64, at []time.Time) string {
	if len(fractions) == 0 {
		return "none"
	}
	fractions = slices.Sorted(slices.Values(fractions))
	perSecond, peak := map[int64]int{}, 0
	for _, t := range at {
		perSecond[t.Unix()]++
		peak = max(peak, perSecond[t.Unix()])
	}
	return fmt.Sprintf("at %.0f%%–%.0f%% of the lifetime (p5–p95), at most %d/s",
		100*percentile(fractions, 0.05), 100*percentile(fractions, 0.95), peak)
}
