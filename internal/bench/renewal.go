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
	toolscache "k8s.io/client-go/tools/cache"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"

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
	if _, err := run.createDataplanes(ctx, n, ""); err != nil {
		return nil, err
	}
	select {
	case <-track.done:
	case <-time.After(lifetime + 2*time.Minute):
		return nil, fmt.Errorf("P6: %d of %d certificates renewed within %s", track.count(), n, lifetime+2*time.Minute)
	}
	issuedOver, offsets, peak := track.summary()
	throttled := strings.Count(localcluster.Logs(run.log), "client-side throttling")
	spread := percentile(offsets, 0.95) - percentile(offsets, 0.05)
	progress("P6: issued over %s; renewed %.1f-%.1f s after issuance (p5-p95), peak %d/s; %d client-side throttling waits",
		issuedOver.Round(100*time.Millisecond), percentile(offsets, 0.05), percentile(offsets, 0.95), peak, throttled)
	return []Row{{
		ID:      "P6",
		Measure: fmt.Sprintf("renewal storm: N=%d certificates of %s, issued within %s", n, lifetime, issuedOver.Round(100*time.Millisecond)),
		Ours: fmt.Sprintf("renewed %.0f–%.0f s after issuance (p5–p95, %.0f%%–%.0f%% of the lifetime), at most %d/s; %d client-side throttling waits",
			percentile(offsets, 0.05), percentile(offsets, 0.95), 100*percentile(offsets, 0.05)/lifetime.Seconds(), 100*percentile(offsets, 0.95)/lifetime.Seconds(), peak, throttled),
		Target: "spread over time; no throttling", Met: met(spread >= 0.05*lifetime.Seconds() && throttled == 0),
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
	c, err := crcache.New(e.c.Config, crcache.Options{Scheme: e.c.Client.Scheme(), DefaultNamespaces: map[string]crcache.Config{benchNamespace: {}}})
	if err != nil {
		return nil, err
	}
	informer, err := c.GetInformer(ctx, &corev1.Secret{})
	if err != nil {
		return nil, err
	}
	see := func(o any) {
		s, ok := o.(*corev1.Secret)
		if !ok {
			return
		}
		chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
		if err != nil {
			return
		}
		seen := certSeen{serial: chain[0].SerialNumber, notBefore: chain[0].NotBefore, observed: time.Now()}
		r.mu.Lock()
		defer r.mu.Unlock()
		first, ok := r.first[s.Name]
		switch {
		case !ok:
			r.first[s.Name] = seen
		case first.serial.Cmp(seen.serial) != 0:
			if _, done := r.renewed[s.Name]; !done {
				r.renewed[s.Name] = seen
				if len(r.renewed) == r.n {
					close(r.done)
				}
			}
		}
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: see, UpdateFunc: func(_, o any) { see(o) }}); err != nil {
		return nil, err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the renewal tracker did not sync")
	}
	return r, nil
}

func (r *renewals) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.renewed)
}

// summary gives how long the first issuance took, each renewal's delay after
// its certificate's issuance in seconds, and the most renewals in a second.
func (r *renewals) summary() (time.Duration, []float64, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var firstIssued, lastIssued time.Time
	var offsets []float64
	perSecond := map[int64]int{}
	for name, renewed := range r.renewed {
		first := r.first[name]
		if firstIssued.IsZero() || first.notBefore.Before(firstIssued) {
			firstIssued = first.notBefore
		}
		if first.notBefore.After(lastIssued) {
			lastIssued = first.notBefore
		}
		offsets = append(offsets, renewed.notBefore.Sub(first.notBefore).Seconds())
		perSecond[renewed.observed.Unix()]++
	}
	slices.Sort(offsets)
	peak := 0
	for _, c := range perSecond {
		peak = max(peak, c)
	}
	return lastIssued.Sub(firstIssued), offsets, peak
}
