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

// admissionLatency is P1: meshcert's validating handler over HTTPS on
// loopback, against a no-op handler on the same server stack (decode,
// allow). Each side's highest rate is found first; the target is the p99
// at half of it, the two sides in alternated rounds, so that a slow
// stretch of the machine weighs on neither alone.
func admissionLatency(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
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
	ours := LoadSpec{URL: fmt.Sprintf("https://%s:%d%s", w.cfg.WebhookHost, w.cfg.WebhookPort, webhook.ValidatingPath), CA: w.env.c.WebhookCA, Bodies: bodies}
	base := LoadSpec{URL: w.noop.url, CA: w.env.c.WebhookCA, Bodies: bodies}
	if err := waitServing(newDriver(base.URL, base.CA, bodies)); err != nil {
		return nil, err
	}
	rounds, sweepFor, latencyFor := 5, 3.0, 4.0
	if o.Quick {
		rounds, sweepFor, latencyFor = 3, 1, 1
	}
	ours.Seconds, base.Seconds = sweepFor, sweepFor
	baseMax, err := maxRate(ctx, base)
	if err != nil {
		return nil, err
	}
	oursMax, err := maxRate(ctx, ours)
	if err != nil {
		return nil, err
	}
	progress("P1: highest rate %.0f/s (no-op: %.0f/s)", oursMax, baseMax)
	ours.Seconds, ours.Rate = latencyFor, oursMax/2
	base.Seconds, base.Rate = latencyFor, baseMax/2
	var oursP99, baseP99, oursP50, baseP50 []time.Duration
	for range rounds {
		for _, side := range []struct {
			spec     LoadSpec
			p50, p99 *[]time.Duration
		}{{ours, &oursP50, &oursP99}, {base, &baseP50, &baseP99}} {
			r, err := load(ctx, side.spec)
			if err != nil {
				return nil, err
			}
			*side.p50, *side.p99 = append(*side.p50, r.Latency[0]), append(*side.p99, r.Latency[1])
		}
	}
	p99, b99 := median(oursP99), median(baseP99)
	progress("P1: at half the highest rate, p99 %s (no-op %s)", ms(p99), ms(b99))
	return []Row{
		{ID: "P1", Measure: "admission: highest rate, validating handler vs a no-op handler on the same HTTPS stack",
			Ours: fmt.Sprintf("%.0f req/s", oursMax), Baseline: fmt.Sprintf("%.0f req/s", baseMax), Ratio: fmt.Sprintf("%.2f×", oursMax/baseMax)},
		{ID: "P1", Measure: fmt.Sprintf("admission: p99 latency at half the highest rate (median of %d alternated rounds of %.0fs)", rounds, latencyFor),
			Ours:     fmt.Sprintf("%s (p50 %s)", ms(p99), ms(median(oursP50))),
			Baseline: fmt.Sprintf("%s (p50 %s)", ms(b99), ms(median(baseP50))),
			Ratio:    fmt.Sprintf("%.2f×", float64(p99)/float64(b99)),
			Target:   "≤ 1.5×", Met: met(float64(p99) <= 1.5*float64(b99))},
	}, nil
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
