package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/webhook"
)

// admissionRate is P1: meshcert's validating handler over HTTPS on loopback,
// against a no-op webhook on the same server stack (decode, allow): the
// highest rate each sustains, and the latency of each at half its highest.
func admissionRate(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	progress("P1: starting a cluster for the admission handler")
	w, err := startWebhookEnv(ctx)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	e, cfg, noop := w.env, w.cfg, w.noop

	bodies, err := reviews()
	if err != nil {
		return nil, err
	}
	ours := LoadSpec{URL: fmt.Sprintf("https://%s:%d%s", cfg.WebhookHost, cfg.WebhookPort, webhook.ValidatingPath), CA: e.c.WebhookCA, Bodies: bodies}
	base := LoadSpec{URL: noop.url, CA: e.c.WebhookCA, Bodies: bodies}
	if err := waitServing(newDriver(base.URL, base.CA, bodies)); err != nil {
		return nil, err
	}

	ours.Seconds, base.Seconds = 3, 3
	rounds, latencyFor := 5, 4.0
	if o.Quick {
		ours.Seconds, base.Seconds, rounds, latencyFor = 1, 1, 3, 1
	}
	// Each side's best number of clients, from a sweep of both in turn.
	var oursAt, baseAt int
	var oursBest, baseBest float64
	for range 2 {
		r, at, err := maxRate(ctx, base)
		if err != nil {
			return nil, err
		}
		if r > baseBest {
			baseBest, baseAt = r, at
		}
		if r, at, err = maxRate(ctx, ours); err != nil {
			return nil, err
		}
		if r > oursBest {
			oursBest, oursAt = r, at
		}
	}
	// Then the two in turn at those, round after round: the ratio is the
	// median of the rounds' ratios, so that a slow stretch of the shared
	// machine weighs on neither side alone.
	ours.Workers, base.Workers = oursAt, baseAt
	oursRuns, baseRuns, err := alternate(ctx, ours, base, rounds)
	if err != nil {
		return nil, err
	}
	ratios := make([]float64, rounds)
	for i := range ratios {
		ratios[i] = oursRuns[i].Rate / baseRuns[i].Rate
	}
	ratio := median(ratios)
	oursMax, baseMax := medianOf(oursRuns, rateOf), medianOf(baseRuns, rateOf)
	progress("P1: highest rate %.0f/s with %d clients (no-op: %.0f/s with %d); the rounds' ratios %.2f", oursMax, oursAt, baseMax, baseAt, ratios)
	ours.Seconds, ours.Rate = latencyFor, oursMax/2
	base.Seconds, base.Rate = latencyFor, baseMax/2
	if oursRuns, baseRuns, err = alternate(ctx, ours, base, rounds); err != nil {
		return nil, err
	}
	oursLat := [2]time.Duration{medianOf(oursRuns, p50Of), medianOf(oursRuns, p99Of)}
	baseLat := [2]time.Duration{medianOf(baseRuns, p50Of), medianOf(baseRuns, p99Of)}
	p99 := oursLat[1]
	progress("P1: at half the highest rate, p50/p99 %s/%s (no-op %s/%s)", ms(oursLat[0]), ms(p99), ms(baseLat[0]), ms(baseLat[1]))
	return []Row{
		{ID: "P1", Measure: fmt.Sprintf("admission: highest rate (validating handler, HTTPS, keep-alive; the median of %d alternated rounds of %.0fs)", rounds, ours.Seconds),
			Ours: fmt.Sprintf("%.0f req/s", oursMax), Baseline: fmt.Sprintf("%.0f req/s (no-op)", baseMax),
			Ratio: fmt.Sprintf("%.2f×", ratio), Target: "≥ 0.9×", Met: met(ratio >= 0.9),
			Note: fmt.Sprintf("the highest rate's ratio in each round, the no-op at %d clients and the handler at %d: %.2f.", baseAt, oursAt, ratios)},
		{ID: "P1", Measure: fmt.Sprintf("admission: latency at half the highest rate (%.0f req/s, open loop; the median of %d alternated rounds of %.0fs)", oursMax/2, rounds, latencyFor),
			Ours:     fmt.Sprintf("p50 %s, p99 %s", ms(oursLat[0]), ms(p99)),
			Baseline: fmt.Sprintf("p50 %s, p99 %s (no-op at %.0f req/s)", ms(baseLat[0]), ms(baseLat[1]), baseMax/2),
			Ratio:    fmt.Sprintf("%.2f× (p99)", float64(p99)/float64(baseLat[1])),
			Target:   "p99 ≤ 1.5× the no-op's", Met: met(float64(p99) <= 1.5*float64(baseLat[1]))},
	}, nil
}

// alternate runs two loads in turn, rounds times each.
func alternate(ctx context.Context, a, b LoadSpec, rounds int) (as, bs []LoadResult, err error) {
	for range rounds {
		ra, err := load(ctx, a)
		if err != nil {
			return nil, nil, err
		}
		rb, err := load(ctx, b)
		if err != nil {
			return nil, nil, err
		}
		as, bs = append(as, ra), append(bs, rb)
	}
	return as, bs, nil
}

func medianOf[T cmp.Ordered](runs []LoadResult, of func(LoadResult) T) T {
	values := make([]T, len(runs))
	for i, r := range runs {
		values[i] = of(r)
	}
	return median(values)
}

func rateOf(r LoadResult) float64      { return r.Rate }
func p50Of(r LoadResult) time.Duration { return r.Latency[0] }
func p99Of(r LoadResult) time.Duration { return r.Latency[1] }

// webhookEnv is a cluster with meshcert's webhooks registered and served in
// this process, and a no-op webhook beside them for a baseline.
type webhookEnv struct {
	env  *env
	cfg  config.Config
	noop *noopWebhook
	stop func()
}

func startWebhookEnv(ctx context.Context) (*webhookEnv, error) {
	e, err := newEnv(ctx, localcluster.Options{Webhooks: true}, "issuers", "clusterissuers")
	if err != nil {
		return nil, err
	}
	cfg, err := e.c.MeshcertConfig(systemNamespace)
	if err != nil {
		e.stop()
		return nil, err
	}
	cfg.ReconcilerEnabled = false
	m, err := e.c.StartMeshcert(ctx, cfg, localcluster.MeshcertOptions{Logs: io.Discard})
	if err != nil {
		e.stop()
		return nil, err
	}
	noopCtx, stopNoop := context.WithCancel(ctx)
	noop, err := startNoopWebhook(noopCtx, cfg)
	stop := func() { stopNoop(); m.Stop(); e.stop() }
	if err != nil {
		stop()
		return nil, err
	}
	return &webhookEnv{env: e, cfg: cfg, noop: noop, stop: stop}, nil
}

// noopWebhook is meshcert's webhook server stack (TLS, admission decoding)
// with a handler that allows everything unchanged: the cost of being a
// webhook at all.
type noopWebhook struct {
	url   string
	calls atomic.Int64
}

func startNoopWebhook(ctx context.Context, cfg config.Config) (*noopWebhook, error) {
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	n := &noopWebhook{url: fmt.Sprintf("https://127.0.0.1:%d/noop", port)}
	srv := webhook.NewServer(webhook.ServerOptions{
		Host: "127.0.0.1", Port: port, CertDir: cfg.CertDir, CertName: cfg.CertName, KeyName: cfg.KeyName,
		TLSMinVersion: cfg.TLSMinVersion,
	})
	srv.Register("/noop", webhook.NewAdmission(admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		n.calls.Add(1)
		return admission.Allowed("")
	})))
	go func() { _ = srv.Start(ctx) }()
	return n, nil
}

// waitServing waits until a server answers.
func waitServing(d *driver) error {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		errs := d.errors.Load()
		d.once()
		if d.errors.Load() == errs {
			return nil
		}
	}
	return fmt.Errorf("the baseline server never answered")
}
