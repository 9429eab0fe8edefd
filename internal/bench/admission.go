package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/webhook"
)

// admissionLatency is P1: meshcert's validating handler over HTTPS on
// loopback, against a no-op handler on the same server stack (decode,
// allow). Each side's highest rate is found first; the target is the p99
// at half of it, the two sides in alternated rounds, so that a slow
// stretch of the machine weighs on neither alone.
func admissionLatency(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	progress("P1: starting a cluster for the admission handler")
	w, err := startWebhookEnv(ctx)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	bodies, err := reviews()
	if err != nil {
		return nil, err
	}
	type side struct {
		spec     loadSpec
		highest  float64
		p50, p99 []time.Duration
	}
	ours := &side{spec: loadSpec{URL: fmt.Sprintf("https://%s:%d%s", w.cfg.WebhookHost, w.cfg.WebhookPort, webhook.ValidatingPath), CA: w.env.c.WebhookCA, Bodies: bodies}}
	base := &side{spec: ours.spec}
	base.spec.URL = w.noopURL
	if err := waitServing(newDriver(base.spec)); err != nil {
		return nil, err
	}
	rounds, sweepFor, latencyFor := 5, 3*time.Second, 4*time.Second
	if o.Quick {
		rounds, sweepFor, latencyFor = 3, time.Second, time.Second
	}
	for _, s := range []*side{base, ours} {
		// The best rate of a closed loop over a few concurrencies.
		for _, workers := range []int{1, 2, 4, 8, 16} {
			s.spec.Workers, s.spec.For = workers, sweepFor
			res, err := load(ctx, s.spec)
			if err != nil {
				return nil, err
			}
			s.highest = max(s.highest, res.Rate)
		}
		s.spec.Workers, s.spec.Rate, s.spec.For = 0, s.highest/2, latencyFor
	}
	progress("P1: highest rate %.0f/s (no-op: %.0f/s)", ours.highest, base.highest)
	for range rounds {
		for _, s := range []*side{ours, base} {
			res, err := load(ctx, s.spec)
			if err != nil {
				return nil, err
			}
			s.p50, s.p99 = append(s.p50, res.P50), append(s.p99, res.P99)
		}
	}
	p99, b99 := median(ours.p99), median(base.p99)
	return []Row{
		{ID: "P1", Measure: "admission: highest rate, validating handler vs a no-op handler on the same HTTPS stack",
			Ours: fmt.Sprintf("%.0f req/s", ours.highest), Baseline: fmt.Sprintf("%.0f req/s", base.highest), Ratio: times(ours.highest / base.highest)},
		{ID: "P1", Measure: fmt.Sprintf("admission: p99 latency at half the highest rate (median of %d alternated rounds of %.0fs)", rounds, latencyFor.Seconds()),
			Ours:     fmt.Sprintf("%s (p50 %s)", ms(p99), ms(median(ours.p50))),
			Baseline: fmt.Sprintf("%s (p50 %s)", ms(b99), ms(median(base.p50))),
			Ratio:    times(float64(p99) / float64(b99)), Target: "≤ 1.5×", Met: met(float64(p99) <= 1.5*float64(b99))},
	}, nil
}

// waitServing waits until a server answers.
func waitServing(d *driver) error {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if d.once(); d.errors.Load() == 0 {
			return nil
		}
		d.errors.Store(0)
	}
	return fmt.Errorf("the baseline server never answered")
}

// webhookEnv is a cluster with meshcert's webhooks registered and served in
// this process, and beside them a no-op webhook for a baseline: meshcert's
// webhook server stack (TLS, admission decoding) with a handler that allows
// everything unchanged, the cost of being a webhook at all.
type webhookEnv struct {
	env       *env
	cfg       config.Config
	noopURL   string
	noopCalls atomic.Int64
	stop      func()
}

func startWebhookEnv(ctx context.Context) (*webhookEnv, error) {
	e, err := newEnv(ctx, localcluster.Options{Webhooks: true}, "issuers", "clusterissuers")
	if err != nil {
		return nil, err
	}
	w := &webhookEnv{env: e}
	if w.cfg, err = e.c.MeshcertConfig(systemNamespace); err != nil {
		e.stop()
		return nil, err
	}
	w.cfg.ReconcilerEnabled = false
	m, err := e.c.StartMeshcert(ctx, w.cfg, localcluster.MeshcertOptions{Logs: io.Discard})
	if err != nil {
		e.stop()
		return nil, err
	}
	noopCtx, stopNoop := context.WithCancel(ctx)
	w.stop = func() { stopNoop(); m.Stop(); e.stop() }
	port, err := localcluster.FreePort()
	if err != nil {
		w.stop()
		return nil, err
	}
	w.noopURL = fmt.Sprintf("https://127.0.0.1:%d/noop", port)
	srv := webhook.NewServer(webhook.ServerOptions{
		Host: "127.0.0.1", Port: port, CertDir: w.cfg.CertDir, CertName: w.cfg.CertName, KeyName: w.cfg.KeyName,
		TLSMinVersion: w.cfg.TLSMinVersion,
	})
	srv.Register("/noop", webhook.NewAdmission(admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		w.noopCalls.Add(1)
		return admission.Allowed("")
	})))
	go func() { _ = srv.Start(noopCtx) }()
	return w, nil
}

// apiCreate is P2: creating a Mesh through the API server, as kubectl does,
// with meshcert's webhooks registered and without; and, to tell meshcert's
// cost from the cost of any webhook, with a no-op pair registered in their
// place. They alternate in rounds, so the drifts of a shared machine hit all.
func apiCreate(ctx context.Context, o Options, progress progressFunc) ([]Row, error) {
	progress("P2: starting a cluster with meshcert's webhooks registered")
	w, err := startWebhookEnv(ctx)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	c := w.env.c.Client
	y, err := testdata("meshes/documented.yaml")
	if err != nil {
		return nil, err
	}
	var mesh unstructured.Unstructured
	if err := yaml.Unmarshal(y, &mesh.Object); err != nil {
		return nil, err
	}
	var mutating admissionregistrationv1.MutatingWebhookConfiguration
	var validating admissionregistrationv1.ValidatingWebhookConfiguration
	for _, obj := range []client.Object{&mutating, &validating} {
		if err := c.Get(ctx, client.ObjectKey{Name: "meshcert-local"}, obj); err != nil {
			return nil, err
		}
	}
	noopMutating, noopValidating := mutating.DeepCopy(), validating.DeepCopy()
	noopClient := admissionregistrationv1.WebhookClientConfig{URL: &w.noopURL, CABundle: w.env.c.WebhookCA}
	for i := range noopMutating.Webhooks {
		noopMutating.Webhooks[i].ClientConfig = noopClient
	}
	for i := range noopValidating.Webhooks {
		noopValidating.Webhooks[i].ClientConfig = noopClient
	}

	rounds, perRound := 4, 50
	if o.Quick {
		rounds, perRound = 2, 20
	}
	// The documented example, under its own name: its caCert is a mesh
	// Secret of mesh demo. Each create is followed by a delete, not timed.
	create := func(into *[]time.Duration) error {
		for range perRound {
			obj := mesh.DeepCopy()
			start := time.Now()
			if err := c.Create(ctx, obj); err != nil {
				return err
			}
			*into = append(*into, time.Since(start))
			if err := c.Delete(ctx, obj); err != nil {
				return err
			}
		}
		return nil
	}
	if err := create(new([]time.Duration)); err != nil { // warm up both paths
		return nil, err
	}
	var with, without, withNoop []time.Duration
	for range rounds {
		for _, step := range []func() error{
			func() error { return create(&with) },
			func() error { return w.register(ctx, "none") },
			func() error { return create(&without) },
			func() error { return w.register(ctx, "no-op", noopMutating, noopValidating) },
			func() error { return create(&withNoop) },
			func() error { return w.register(ctx, "none") },
			func() error { return w.register(ctx, "meshcert", &mutating, &validating) },
		} {
			if err := step(); err != nil {
				return nil, err
			}
		}
	}
	ratio := float64(mean(with)) / float64(mean(without))
	return []Row{{
		ID: "P2", Measure: fmt.Sprintf("create a Mesh through the API server, with meshcert's webhooks vs none (mean of %d)", len(with)),
		Ours: ms(mean(with)), Baseline: ms(mean(without)), Ratio: times(ratio), Target: "≤ 1.15×", Met: met(ratio <= 1.15),
	}, {
		ID: "P2", Measure: "the same, vs a no-op webhook pair on the same server stack",
		Ours: ms(mean(with)), Baseline: ms(mean(withNoop)), Ratio: times(float64(mean(with)) / float64(mean(withNoop))),
	}}, nil
}

// register registers the named pair of webhooks, or removes meshcert-local
// given "none", and waits until the API server acts on the change, as the
// outcome of a dry-run create of a Mesh without an issuer name shows:
// meshcert refuses it; the no-op pair is called twice; with none, it is
// accepted.
func (w *webhookEnv) register(ctx context.Context, name string, pair ...client.Object) error {
	c, noopCalls := w.env.c.Client, w.noopCalls.Load()
	for _, obj := range pair {
		obj = obj.DeepCopyObject().(client.Object)
		obj.SetResourceVersion("")
		if err := c.Create(ctx, obj); err != nil {
			return err
		}
	}
	if name == "none" {
		for _, obj := range []client.Object{&admissionregistrationv1.MutatingWebhookConfiguration{}, &admissionregistrationv1.ValidatingWebhookConfiguration{}} {
			obj.SetName("meshcert-local")
			if err := c.Delete(ctx, obj); err != nil {
				return err
			}
		}
	}
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kuma.io/v1alpha1", "kind": "Mesh", "metadata": map[string]any{"name": "bench-probe"},
		"spec": map[string]any{"mtls": map[string]any{"backends": []any{map[string]any{"name": "cm", "type": "certmanager", "conf": map[string]any{"issuerRef": map[string]any{}}}}}},
	}}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		refused := c.Create(ctx, probe.DeepCopy(), client.DryRunAll) != nil
		if map[string]bool{"meshcert": refused, "none": !refused, "no-op": !refused && w.noopCalls.Load() >= noopCalls+2}[name] {
			return nil
		}
	}
	return fmt.Errorf("the API server did not take up the webhook change to %s", name)
}

// loadSpec is a load run, done by a process of its own so that the load's
// garbage collector and scheduler do not share the server's.
type loadSpec struct {
	URL     string
	CA      []byte
	Bodies  [][]byte
	Workers int     // closed loop
	Rate    float64 // open loop
	For     time.Duration
}

// loadResult is what a load run measured.
type loadResult struct {
	Rate     float64
	P50, P99 time.Duration // open loop
	Failures int64
}

// Load runs the load run read from in and writes its result to out;
// `meshcert-bench load` calls it.
func Load(ctx context.Context, in io.Reader, out io.Writer) error {
	var spec loadSpec
	if err := json.NewDecoder(in).Decode(&spec); err != nil {
		return err
	}
	d := newDriver(spec)
	var res loadResult
	if spec.Rate > 0 {
		lat := d.openLoop(ctx, spec.Rate, spec.For)
		res = loadResult{Rate: float64(len(lat)) / spec.For.Seconds(), P50: percentile(lat, 0.5), P99: percentile(lat, 0.99)}
	} else {
		d.closedLoop(spec.Workers, time.Second) // open the connections
		d.errors.Store(0)
		res.Rate = d.closedLoop(spec.Workers, spec.For)
	}
	res.Failures = d.errors.Load()
	return json.NewEncoder(out).Encode(res)
}

// load runs a spec in a child process: this very binary, with the argument
// "load" and the spec on stdin.
func load(ctx context.Context, spec loadSpec) (loadResult, error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return loadResult{}, err
	}
	cmd := exec.CommandContext(ctx, "/proc/self/exe", "load")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("load process: %w", err)
	}
	var res loadResult
	if err := json.Unmarshal(out, &res); err != nil {
		return res, err
	}
	if res.Failures > 0 {
		return res, fmt.Errorf("%d of the load's requests to %s failed", res.Failures, spec.URL)
	}
	return res, nil
}

// driver posts AdmissionReviews over HTTPS with keep-alive, as the API
// server does.
type driver struct {
	client *http.Client
	url    string
	bodies [][]byte
	next   atomic.Uint64
	errors atomic.Int64
}

func newDriver(spec loadSpec) *driver {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(spec.CA)
	return &driver{url: spec.URL, bodies: spec.Bodies, client: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			MaxIdleConnsPerHost: 256,
			MaxConnsPerHost:     256,
		},
	}}
}

// once sends one review and checks the answer is one.
func (d *driver) once() {
	body := d.bodies[d.next.Add(1)%uint64(len(d.bodies))]
	resp, err := d.client.Post(d.url, "application/json", bytes.NewReader(body))
	if err != nil {
		d.errors.Add(1)
		return
	}
	// Read, not decode, the answer: the load must cost as little as it can,
	// since it shares the machine with the server it measures.
	answer, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(answer, []byte(`"response":{"uid":`)) {
		d.errors.Add(1)
	}
}

// closedLoop runs workers that send back to back for dur; it returns
// requests per second.
func (d *driver) closedLoop(workers int, dur time.Duration) float64 {
	var n atomic.Int64
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				d.once()
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / dur.Seconds()
}

// openLoop sends at a fixed rate for dur, whatever the answers' pace, and
// returns the latencies, sorted, each from its scheduled start so queueing
// counts. A fixed pool of senders takes the slots, over connections opened
// beforehand: a burst must queue, not open new TLS connections mid-measure.
func (d *driver) openLoop(ctx context.Context, rate float64, dur time.Duration) []time.Duration {
	const senders = 32
	d.closedLoop(senders, time.Second) // open a connection for each sender
	d.errors.Store(0)
	interval := time.Duration(float64(time.Second) / rate)
	slots := make(chan time.Time, int(rate*dur.Seconds())+1)
	var mu sync.Mutex
	var latencies []time.Duration
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for due := range slots {
				d.once()
				l := time.Since(due)
				mu.Lock()
				latencies = append(latencies, l)
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	for due := start; due.Sub(start) < dur && ctx.Err() == nil; due = due.Add(interval) {
		time.Sleep(time.Until(due))
		slots <- due
	}
	close(slots)
	wg.Wait()
	slices.Sort(latencies)
	return latencies
}

// reviewMeshes are the example Meshes of the admission benchmark: as in a
// real cluster, most are valid (one looks up a mesh Secret and checks its CA,
// others an Issuer or a ClusterIssuer), some not (one error, or eight).
var reviewMeshes = []string{"documented", "unknown-fields", "external-issuer", "cacert-file", "other-backend-types", "issuerref-missing-name", "many-errors"}

// reviews wraps the example Meshes in AdmissionReviews for CREATE.
func reviews() ([][]byte, error) {
	var out [][]byte
	for _, f := range reviewMeshes {
		y, err := testdata("meshes/" + f + ".yaml")
		if err != nil {
			return nil, err
		}
		obj, err := yaml.YAMLToJSON(y)
		if err != nil {
			return nil, err
		}
		var meta struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		_ = json.Unmarshal(obj, &meta)
		review, err := json.Marshal(map[string]any{
			"apiVersion": "admission.k8s.io/v1",
			"kind":       "AdmissionReview",
			"request": map[string]any{
				"uid":       fmt.Sprintf("bench-%s", f),
				"kind":      map[string]string{"group": "kuma.io", "version": "v1alpha1", "kind": "Mesh"},
				"resource":  map[string]string{"group": "kuma.io", "version": "v1alpha1", "resource": "meshes"},
				"name":      meta.Metadata.Name,
				"operation": "CREATE",
				"object":    json.RawMessage(obj),
			},
		})
		if err != nil {
			return nil, err
		}
		out = append(out, review)
	}
	return out, nil
}
