package bench

import (
	"context"
	"fmt"
	"os"
	"time"
)

// secretIssuance is P3, P4 and P5: issuance for N dataplanes against
// cert-manager's signer alone (a) and against cert-manager's own
// Certificates (b); meshcert's peak memory meanwhile; and its API writes at
// rest afterwards.
func secretIssuance(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	// (b) is slow enough at 10,000 to take the whole budget of the run, so
	// it stops after certificatesLimit.
	sizes, idleFor, certificatesLimit, syncPeriod := []int{1000, 10000}, 10*time.Minute, 5*time.Minute, time.Minute
	if o.Quick {
		sizes, idleFor, certificatesLimit, syncPeriod = []int{200}, time.Minute, 2*time.Minute, 15*time.Second
	}
	dir, err := os.MkdirTemp("", "meshcert-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

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
		var extra []string
		if i == 0 {
			extra = append(extra, fmt.Sprintf("--sync-period=%s", syncPeriod))
		}
		run, err := startMeshcert(ctx, dir, "24h", extra...)
		if err != nil {
			return nil, err
		}
		ours, err := run.createDataplanes(ctx, n)
		if err != nil {
			run.stop()
			return nil, fmt.Errorf("P3 meshcert: %w", err)
		}
		progress("P3: N=%d: meshcert %s, (a) %s, (b) %s", n, ours.Round(100*time.Millisecond), a.Round(100*time.Millisecond), bText)
		ofSigner, thanCertificates := a.Seconds()/ours.Seconds(), b.Seconds()/ours.Seconds()
		rows = append(rows,
			Row{ID: "P3", Measure: fmt.Sprintf("%d dataplanes to valid Secrets, vs (a) the CA signer alone on bare requests", n),
				Ours: rate(ours, n), Baseline: rate(a, n),
				Ratio: fmt.Sprintf("%.2f×", ofSigner), Target: fmt.Sprintf("≥ %.1f×", signerTarget(n)), Met: met(ofSigner >= signerTarget(n))},
			Row{ID: "P3", Measure: fmt.Sprintf("%d dataplanes, vs (b) the same identities as cert-manager Certificates", n),
				Ours: ours.Round(100 * time.Millisecond).String(), Baseline: bText,
				Ratio: fmt.Sprintf("%.1f× faster", thanCertificates), Target: "≥ 2× faster", Met: met(thanCertificates >= 2)},
		)
		time.Sleep(time.Second) // a last sample of the settled process
		rss[n] = run.peakRSS
		row := Row{ID: "P4", Measure: fmt.Sprintf("meshcert's peak resident memory at %d dataplanes", n), Ours: mib(run.peakRSS)}
		if n == 10000 {
			row.Target, row.Met = "≤ 150 MiB", met(run.peakRSS <= 150<<20)
		}
		rows = append(rows, row)
		if i > 0 {
			run.stop()
			continue
		}
		// P5 runs at rest in the background, while the next sizes run.
		p5 = make(chan Row, 1)
		go func() {
			defer run.stop()
			p5 <- idleWrites(run, n, idleFor, syncPeriod, progress)
		}()
	}
	if len(sizes) > 1 {
		lo, hi := sizes[0], sizes[len(sizes)-1]
		growth := (float64(rss[hi]) - float64(rss[lo])) / float64(hi-lo)
		rows = append(rows, Row{ID: "P4", Measure: fmt.Sprintf("meshcert's resident memory per dataplane, from %d to %d", lo, hi), Ours: fmt.Sprintf("%.1f KiB", growth/1024)})
	}
	if p5 != nil {
		progress("P5: waiting for the measure at rest to end")
		rows = append(rows, <-p5)
	}
	return rows, nil
}

// idleWrites is P5: meshcert's API writes during a steady state with forced
// resyncs, which must make none.
func idleWrites(r *meshcertRun, n int, window, syncPeriod time.Duration, progress func(string, ...any)) Row {
	time.Sleep(5 * time.Second) // the last requests' deletions
	before, err1 := r.writes()
	reconcilesBefore, err2 := scrape(r.metrics, "controller_runtime_reconcile_total")
	time.Sleep(window)
	after, err3 := r.writes()
	reconcilesAfter, err4 := scrape(r.metrics, "controller_runtime_reconcile_total")
	row := Row{ID: "P5", Measure: fmt.Sprintf("API writes by meshcert in %s at rest, %d dataplanes, a resync every %s", window, n, syncPeriod), Target: "0"}
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			row.Ours = "not measured: " + err.Error()
			return row
		}
	}
	writes, reconciled := after-before, total(reconcilesAfter)-total(reconcilesBefore)
	progress("P5: %.0f writes in %s at rest, %.0f reconciles", writes, window, reconciled)
	row.Ours, row.Met = fmt.Sprintf("%.0f (in %.0f reconciles)", writes, reconciled), met(writes == 0)
	return row
}

// signerTarget is P3's target against the signer alone: 0.7× at 1,000; at
// 10,000, where the API server's writes bound both paths, 0.6×.
func signerTarget(n int) float64 {
	if n >= 10000 {
		return 0.6
	}
	return 0.7
}

// rate is a time to do n things, with their rate.
func rate(took time.Duration, n int) string {
	return fmt.Sprintf("%s (%.0f/s)", took.Round(100*time.Millisecond), float64(n)/took.Seconds())
}
