package bench

import (
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
	latencyRounds, latencyFor := 5, 4.0
	if o.Quick {
		ours.Seconds, base.Seconds, latencyRounds, latencyFor = 1, 1, 3, 1
	}
	// Alternate the two, so drifts of a shared machine hit both alike.
	var oursMax, baseMax float64
	var oursAt, baseAt int
	for range 2 {
		r, at, err := maxRate(ctx, base)
		if err != nil {
			return nil, err
		}
		if r > baseMax {
			baseMax, baseAt = r, at
		}
		if r, at, err = maxRate(ctx, ours); err != nil {
			return nil, err
		}
		if r > oursMax {
			oursMax, oursAt = r, at
		}
	}
	progress("P1: highest rate %.0f/s with %d clients (no-op: %.0f/s with %d)", oursMax, oursAt, baseMax, baseAt)
	ours.Seconds, ours.Rate = latencyFor, oursMax/2
	base.Seconds, base.Rate = latencyFor, baseMax/2
	oursLat, baseLat, err := alternateLatency(ctx, ours, base, latencyRounds)
	if err != nil {
		return nil, err
	}
	ratio := oursMax / baseMax
	p99 := oursLat[1]
	progress("P1: at half the highest rate, p50/p99 %s/%s (no-op %s/%s)", ms(oursLat[0]), ms(p99), ms(baseLat[0]), ms(baseLat[1]))
	return []Row{
		{ID: "P1", Measure: "admission: highest rate (validating handler, HTTPS, keep-alive)",
			Ours: fmt.Sprintf("%.0f req/s", oursMax), Baseline: fmt.Sprintf("%.0f req/s (no-op)", baseMax),
			Ratio: fmt.Sprintf("%.2f×", ratio), Target: "≥ 0.9×", Met: met(ratio >= 0.9)},
		{ID: "P1", Measure: fmt.Sprintf("admission: latency at half the highest rate (%.0f req/s, open loop; the median of %d alternated rounds of %.0fs)", oursMax/2, latencyRounds, latencyFor),
			Ours:     fmt.Sprintf("p50 %s, p99 %s", ms(oursLat[0]), ms(p99)),
			Baseline: fmt.Sprintf("p50 %s, p99 %s (no-op at %.0f req/s)", ms(baseLat[0]), ms(baseLat[1]), baseMax/2),
			Ratio:    fmt.Sprintf("%.2f× (p99)", float64(p99)/float64(baseLat[1])),
			Target:   "p99 ≤ 1.5× the no-op's", Met: met(float64(p99) <= 1.5*float64(baseLat[1]))},
	}, nil
}

// alternateLatency runs two open-loop loads in turn, rounds times each, so
// that neither a drift of the shared machine nor one slow round weighs on one
// side alone. Each side's p50 and p99 are the medians of its rounds'.
func alternateLatency(ctx context.Context, a, b LoadSpec, rounds int) (aLat, bLat [2]time.Duration, err error) {
	var as, bs [2][]time.Duration
	for range rounds {
		for _, side := range []struct {
			spec LoadSpec
			into *[2][]time.Duration
		}{{a, &as}, {b, &bs}} {
			res, err := load(ctx, side.spec)
			if err != nil {
				return aLat, bLat, err
			}
			for i := range side.into {
				side.into[i] = append(side.into[i], res.Latency[i])
			}
		}
	}
	for i := range aLat {
		aLat[i], bLat[i] = median(as[i]), median(bs[i])
	}
	return aLat, bLat, nil
}

// webhookEnv is a cluster with meshcert's webhooks registered and served in
// this process, and a no-op webhook beside them for a baseline.
type webhookEnv struct {
	env  *env
	cfg  config.Config
	noop *noopWebhook
	stop func()
}

func startWebhookEnv(ctx context.Context) (*webhookEnv, error) {
	e, err := newEnv(ctx, true, "issuers", "clusterissuers")
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
