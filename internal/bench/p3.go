package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// secretIssuance is P3, P4 and P5: issuance for N dataplanes against cert-manager's
// signer alone (a) and against cert-manager's own Certificates (b); the
// memory meshcert took to do it; and its API writes at rest afterwards.
func secretIssuance(ctx context.Context, o Options, progress func(string, ...any)) ([]Row, error) {
	sizes := []int{1000, 10000}
	// (b) is slow enough at 10,000 to take the whole budget of the run.
	steady, certificatesLimit := 10*time.Minute, 5*time.Minute
	if o.Quick {
		sizes, steady, certificatesLimit = []int{200}, time.Minute, 2*time.Minute
	}
	dir, err := os.MkdirTemp("", "meshcert-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	syncPeriod := time.Minute
	if o.Quick {
		syncPeriod = 15 * time.Second
	}
	var rows []Row
	var p5 chan Row
	rss := map[int]uint64{}
	for i, n := range sizes {
		progress("P3: N=%d: (a) cert-manager's CA signer alone", n)
		a, aCost, err := signerAlone(ctx, n, o.ProfileDir)
		if err != nil {
			return nil, fmt.Errorf("P3 (a): %w", err)
		}
		progress("P3: N=%d: (a) %s; %s", n, a.Round(100*time.Millisecond), aCost)
		progress("P3: N=%d: (b) cert-manager Certificates", n)
		b, bReady, bCost, err := certificates(ctx, n, certificatesLimit, o.ProfileDir)
		if err != nil {
			return nil, fmt.Errorf("P3 (b): %w", err)
		}
		progress("P3: N=%d: (b) %d ready in %s; %s", n, bReady, b.Round(100*time.Millisecond), bCost)
		bText := fmt.Sprintf("%s (%.0f/s)", b.Round(100*time.Millisecond), float64(n)/b.Seconds())
		if bReady < n {
			// Stopped at the limit: what it would take at its rate so far.
			b = time.Duration(float64(b) * float64(n) / float64(max(bReady, 1)))
			bText = fmt.Sprintf("≥ %s (%d of %d ready after %s: %.0f/s)", b.Round(time.Second), bReady, n, certificatesLimit, float64(bReady)/certificatesLimit.Seconds())
		}
		progress("P3: N=%d: meshcert", n)
		// The first size stays at rest for P5, resyncing every minute (every
		// 15s when quick); the others keep the default, so that resyncs do not
		// weigh on their issuance.
		var extra []string
		if i == 0 {
			extra = append(extra, fmt.Sprintf("--sync-period=%s", syncPeriod))
		}
		run, err := startMeshcert(ctx, dir, "24h", extra...)
		if err != nil {
			return nil, err
		}
		ours, err := run.createDataplanes(ctx, n, o.ProfileDir)
		if err != nil {
			run.stop()
			return nil, fmt.Errorf("P3 meshcert: %w", err)
		}
		oursCost := run.cost
		progress("P3: N=%d: meshcert %s; %s", n, ours.Round(100*time.Millisecond), oursCost)
		ofSigner, thanCertificates := a.Seconds()/ours.Seconds(), b.Seconds()/ours.Seconds()
		rows = append(rows,
			Row{ID: "P3", Measure: fmt.Sprintf("N=%d dataplanes to N valid Secrets, vs (a) the CA signer alone on N bare requests", n),
				Ours:     fmt.Sprintf("%s (%.0f/s)", ours.Round(100*time.Millisecond), float64(n)/ours.Seconds()),
				Baseline: fmt.Sprintf("%s (%.0f/s)", a.Round(100*time.Millisecond), float64(n)/a.Seconds()),
				Ratio:    fmt.Sprintf("%.2f× of (a)", ofSigner), Target: fmt.Sprintf("≥ %.1f× of (a)", signerTarget(n)), Met: met(ofSigner >= signerTarget(n))},
			Row{ID: "P3", Measure: fmt.Sprintf("N=%d, vs (b) the same identities as cert-manager Certificates", n),
				Ours: ours.Round(100 * time.Millisecond).String(), Baseline: bText,
				Ratio: fmt.Sprintf("%.1f× faster", thanCertificates), Target: "≥ 2× faster", Met: met(thanCertificates >= 2),
				Note: fmt.Sprintf("N=%d, from the first create, CPU seconds and kube-apiserver's writes: (a) %s; (b) %s; meshcert %s.", n, aCost, bCost, oursCost)},
		)
		time.Sleep(time.Second) // a last sample of the settled process
		rss[n] = run.peakRSS.total
		if o.ProfileDir != "" {
			// What the memory holds, with every dataplane issued.
			if err := fetchProfile(ctx, http.DefaultClient, "http://"+run.pprof+"/debug/pprof/heap", filepath.Join(o.ProfileDir, fmt.Sprintf("p4-meshcert-heap-%d.pprof", n)))(); err != nil {
				progress("P4: no heap profile: %v", err)
			}
		}
		row := Row{ID: "P4", Measure: fmt.Sprintf("meshcert's peak memory at N=%d", n),
			Ours: fmt.Sprintf("RSS %s (anonymous %s, the binary's pages %s), heap %s",
				mib(float64(run.peakRSS.total)), mib(float64(run.peakRSS.anon)), mib(float64(run.peakRSS.file)), mib(run.peakHeap))}
		if n == 10000 {
			row.Target, row.Met = "≤ 150 MiB", met(run.peakRSS.total <= 150<<20)
		}
		rows = append(rows, row)
		if i == 0 {
			// P5 runs at rest in the background, while the next sizes run.
			p5 = make(chan Row, 1)
			go func() {
				defer run.stop()
				p5 <- atRest(ctx, run, n, steady, syncPeriod, progress)
			}()
		} else {
			run.stop()
		}
	}
	if len(sizes) > 1 {
		lo, hi := sizes[0], sizes[len(sizes)-1]
		growth := (float64(rss[hi]) - float64(rss[lo])) / float64(hi-lo)
		rows = append(rows, Row{ID: "P4", Measure: "meshcert's memory per dataplane (RSS, from N=1,000 to 10,000)", Ours: fmt.Sprintf("%.1f KiB", growth/1024)})
	}
	if p5 != nil {
		progress("P5: waiting for the measure at rest to end")
		rows = append(rows, <-p5)
	}
	return rows, nil
}

// atRest is P5: meshcert's API writes during a steady state with forced
// resyncs, which must make none.
func atRest(ctx context.Context, r *meshcertRun, n int, window, syncPeriod time.Duration, progress func(string, ...any)) Row {
	time.Sleep(5 * time.Second) // the last requests' deletions
	before, err1 := r.writes()
	reconcilesBefore, err2 := scrapeAll(r.metrics, "controller_runtime_reconcile_total")
	time.Sleep(window)
	after, err3 := r.writes()
	reconcilesAfter, err4 := scrapeAll(r.metrics, "controller_runtime_reconcile_total")
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			return Row{ID: "P5", Measure: "API writes at rest", Ours: "error: " + err.Error()}
		}
	}
	reconciled := sum(reconcilesAfter) - sum(reconcilesBefore)
	writes := after - before
	progress("P5: %.0f writes in %s at rest, %.0f reconciles", writes, window, reconciled)
	return Row{ID: "P5", Measure: fmt.Sprintf("API writes by meshcert in %s at rest, N=%d, a resync every %s (%.0f reconciles)", window, n, syncPeriod, reconciled),
		Ours: fmt.Sprintf("%.0f", writes), Target: "0", Met: met(writes == 0)}
}

func sum(m map[string]float64) float64 {
	total := 0.0
	for _, v := range m {
		total += v
	}
	return total
}

// signerTarget is P3's target against the signer alone: 0.7× at 1,000; at
// 10,000, where the API server's writes bound both paths, 0.6×.
func signerTarget(n int) float64 {
	if n >= 10000 {
		return 0.6
	}
	return 0.7
}
