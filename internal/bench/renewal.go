package bench

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// renewalStorm is P6: N certificates issued together, so all due together.
// The renewals must spread over time, and meshcert must never wait on a
// client-side rate limit.
func renewalStorm(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	n, expiration, lifetime := 1000, "2m", 2*time.Minute
	if o.Quick {
		n, expiration, lifetime = 200, "1m", time.Minute
	}
	dir, err := os.MkdirTemp("", "meshcert-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	progress("P6: N=%d certificates of %s", n, lifetime)
	run, err := startMeshcert(ctx, dir, expiration)
	if err != nil {
		return nil, err
	}
	defer run.stop()
	track, err := trackRenewals(ctx, run.e, n)
	if err != nil {
		return nil, err
	}
	if _, err := run.createDataplanes(ctx, n); err != nil {
		return nil, err
	}
	select {
	case <-track.done:
	case <-time.After(lifetime + 2*time.Minute):
		return nil, fmt.Errorf("P6: %d of %d certificates renewed within %s", track.count(), n, lifetime+2*time.Minute)
	}
	issuedOver, fractions, renewedAt := track.summary(lifetime)
	throttled := strings.Count(localcluster.Logs(run.log), "client-side throttling")
	progress("P6: issued over %s; renewed %s; %d client-side throttling waits", issuedOver.Round(100*time.Millisecond), spread(fractions, renewedAt), throttled)
	spreadOver := percentile(fractions, 0.95) - percentile(fractions, 0.05)
	return []Row{{
		ID:      "P6",
		Measure: fmt.Sprintf("renewal storm: %d certificates of %s, issued within %s", n, lifetime, issuedOver.Round(100*time.Millisecond)),
		Ours:    fmt.Sprintf("renewed %s; %d client-side throttling waits", spread(fractions, renewedAt), throttled),
		Target:  "spread over time; no throttling", Met: met(spreadOver >= 0.05 && throttled == 0),
	}}, nil
}

// renewals follows each dataplane's Secret from its first certificate to its
// first renewal.
type renewals struct {
	mu      sync.Mutex
	n       int
	first   map[string]certSeen
	renewed map[string]certSeen
	done    chan struct{}
}

type certSeen struct {
	serial    *big.Int
	notBefore time.Time
	observed  time.Time
}

func trackRenewals(ctx context.Context, e *env, n int) (*renewals, error) {
	r := &renewals{n: n, first: map[string]certSeen{}, renewed: map[string]certSeen{}, done: make(chan struct{})}
	return r, follow(ctx, e, &corev1.Secret{}, benchNamespace, func(o client.Object) {
		chain, err := pki.DecodeX509CertificateChainBytes(o.(*corev1.Secret).Data[corev1.TLSCertKey])
		if err != nil {
			return
		}
		seen := certSeen{serial: chain[0].SerialNumber, notBefore: chain[0].NotBefore, observed: time.Now()}
		r.mu.Lock()
		defer r.mu.Unlock()
		first, ok := r.first[o.GetName()]
		_, renewed := r.renewed[o.GetName()]
		switch {
		case !ok:
			r.first[o.GetName()] = seen
		case !renewed && first.serial.Cmp(seen.serial) != 0:
			r.renewed[o.GetName()] = seen
			if len(r.renewed) == r.n {
				close(r.done)
			}
		}
	})
}

func (r *renewals) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.renewed)
}

// summary gives how long the first issuance took, when each renewal came
// in its certificate's lifetime (as a fraction of it, sorted), and when each
// was seen.
func (r *renewals) summary(lifetime time.Duration) (time.Duration, []float64, []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var firstIssued, lastIssued time.Time
	var fractions []float64
	var seen []time.Time
	for name, renewed := range r.renewed {
		first := r.first[name]
		if firstIssued.IsZero() || first.notBefore.Before(firstIssued) {
			firstIssued = first.notBefore
		}
		if first.notBefore.After(lastIssued) {
			lastIssued = first.notBefore
		}
		fractions = append(fractions, float64(renewed.notBefore.Sub(first.notBefore))/float64(lifetime))
		seen = append(seen, renewed.observed)
	}
	slices.Sort(fractions)
	return lastIssued.Sub(firstIssued), fractions, seen
}
