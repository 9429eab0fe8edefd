package bench

import (
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// apiCreate is P2: creating a Mesh through the API server, as kubectl does,
// with meshcert's webhooks registered and without; and, to tell meshcert's
// cost from the cost of any webhook, with a no-op pair registered in their
// place. They alternate in rounds, so the drifts of a shared machine hit all.
func apiCreate(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	progress("P2: starting a cluster with meshcert's webhooks registered")
	w, err := startWebhookEnv(ctx)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	e, noop := w.env, w.noop

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
	if err := e.c.Client.Get(ctx, client.ObjectKey{Name: "meshcert-local"}, &mutating); err != nil {
		return nil, err
	}
	if err := e.c.Client.Get(ctx, client.ObjectKey{Name: "meshcert-local"}, &validating); err != nil {
		return nil, err
	}
	noopMutating, noopValidating := mutating.DeepCopy(), validating.DeepCopy()
	for i := range noopMutating.Webhooks {
		noopMutating.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &noop.url, CABundle: e.c.WebhookCA}
	}
	for i := range noopValidating.Webhooks {
		noopValidating.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &noop.url, CABundle: e.c.WebhookCA}
	}
	// Each registration is in force once the API server acts on it: meshcert
	// refuses a Mesh without an issuer name; the no-op pair is called twice;
	// with none, the Mesh is accepted.
	meshcertTakenUp := func(dryRun error) bool { return dryRun != nil }
	noneTakenUp := func(dryRun error) bool { return dryRun == nil }
	noopTakenUp := func(before int64) func(error) bool {
		return func(dryRun error) bool { return dryRun == nil && noop.calls.Load() >= before+2 }
	}

	rounds, perRound := 4, 50
	if o.Quick {
		rounds, perRound = 2, 20
	}
	// The documented example, under its own name: its caCert is a mesh
	// Secret of mesh demo. Each create is followed by a delete, not timed.
	create := func(k int) ([]time.Duration, error) {
		var out []time.Duration
		for range k {
			obj := mesh.DeepCopy()
			start := time.Now()
			if err := e.c.Client.Create(ctx, obj); err != nil {
				return nil, err
			}
			out = append(out, time.Since(start))
			if err := e.c.Client.Delete(ctx, obj); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	if _, err := create(perRound); err != nil { // warm up both paths
		return nil, err
	}
	var with, without, withNoop []time.Duration
	measure := func(into *[]time.Duration) error {
		d, err := create(perRound)
		*into = append(*into, d...)
		return err
	}
	for range rounds {
		for _, step := range []func() error{
			func() error { return measure(&with) },
			func() error { return setWebhooks(ctx, e, nil, nil, noneTakenUp) },
			func() error { return measure(&without) },
			func() error {
				return setWebhooks(ctx, e, noopMutating, noopValidating, noopTakenUp(noop.calls.Load()))
			},
			func() error { return measure(&withNoop) },
			func() error { return setWebhooks(ctx, e, nil, nil, noneTakenUp) },
			func() error { return setWebhooks(ctx, e, &mutating, &validating, meshcertTakenUp) },
		} {
			if err := step(); err != nil {
				return nil, err
			}
		}
	}
	ratio, ofNoop := float64(mean(with))/float64(mean(without)), float64(mean(with))/float64(mean(withNoop))
	progress("P2: create %s with meshcert's webhooks, %s without, %s with a no-op pair", ms(mean(with)), ms(mean(without)), ms(mean(withNoop)))
	return []Row{{
		ID: "P2", Measure: fmt.Sprintf("create a Mesh through the API server, with meshcert's webhooks vs none (mean of %d)", len(with)),
		Ours: ms(mean(with)), Baseline: ms(mean(without)), Ratio: fmt.Sprintf("%.2f×", ratio), Target: "≤ 1.15×", Met: met(ratio <= 1.15),
	}, {
		ID: "P2", Measure: "the same, vs a no-op webhook pair on the same server stack",
		Ours: ms(mean(with)), Baseline: ms(mean(withNoop)), Ratio: fmt.Sprintf("%.2f×", ofNoop),
	}}, nil
}

// setWebhooks registers a pair of webhooks (or removes it, given nil), and
// waits until takenUp says, from the outcome of a dry-run create of a Mesh
// without an issuer name, that the API server acts on the change.
func setWebhooks(ctx context.Context, e *env, m *admissionregistrationv1.MutatingWebhookConfiguration, v *admissionregistrationv1.ValidatingWebhookConfiguration, takenUp func(dryRun error) bool) error {
	if m != nil {
		m, v = m.DeepCopy(), v.DeepCopy()
		m.ResourceVersion, v.ResourceVersion = "", ""
		if err := e.c.Client.Create(ctx, m); err != nil {
			return err
		}
		if err := e.c.Client.Create(ctx, v); err != nil {
			return err
		}
	} else {
		for _, obj := range []client.Object{&admissionregistrationv1.MutatingWebhookConfiguration{}, &admissionregistrationv1.ValidatingWebhookConfiguration{}} {
			obj.SetName("meshcert-local")
			if err := e.c.Client.Delete(ctx, obj); err != nil {
				return err
			}
		}
	}
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kuma.io/v1alpha1", "kind": "Mesh", "metadata": map[string]any{"name": "bench-probe"},
		"spec": map[string]any{"mtls": map[string]any{"backends": []any{map[string]any{"name": "cm", "type": "certmanager", "conf": map[string]any{"issuerRef": map[string]any{}}}}}},
	}}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if takenUp(e.c.Client.Create(ctx, probe.DeepCopy(), client.DryRunAll)) {
			return nil
		}
	}
	return fmt.Errorf("the API server did not take up the webhook change")
}

func mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}
