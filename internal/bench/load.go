package bench

import (
	"bytes"
	"cmp"
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
)

// driver posts AdmissionReviews over HTTPS with keep-alive, as the API
// server does.
type driver struct {
	client *http.Client
	url    string
	bodies [][]byte
	next   atomic.Uint64
	errors atomic.Int64
}

func newDriver(url string, ca []byte, bodies [][]byte) *driver {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &driver{url: url, bodies: bodies, client: &http.Client{
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				d.once()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / dur.Seconds()
}

// openLoop sends at a fixed rate for dur, whatever the answers' pace, and
// returns the latencies, each from its scheduled start so queueing counts. A
// fixed pool of senders takes the slots, over connections opened beforehand:
// a burst must queue, not open new TLS connections mid-measure.
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			for due := range slots {
				d.once()
				l := time.Since(due)
				mu.Lock()
				latencies = append(latencies, l)
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= dur || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Until(due))
		slots <- due
	}
	close(slots)
	wg.Wait()
	slices.Sort(latencies)
	return latencies
}

// percentile is the p-th (0 to 1) of sorted values, or zero for none.
func percentile[T cmp.Ordered](sorted []T, p float64) T {
	if len(sorted) == 0 {
		var zero T
		return zero
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// median is the middle of values, in any order.
func median[T cmp.Ordered](values []T) T {
	return percentile(slices.Sorted(slices.Values(values)), 0.5)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// LoadSpec is a load run, done by a process of its own so that the load's
// garbage collector and scheduler do not share the server's.
type LoadSpec struct {
	URL     string   `json:"url"`
	CA      []byte   `json:"ca"`
	Bodies  [][]byte `json:"bodies"`
	Workers int      `json:"workers,omitempty"` // closed loop
	Rate    float64  `json:"rate,omitempty"`    // open loop
	Seconds float64  `json:"seconds"`
}

// LoadResult is what a load run measured.
type LoadResult struct {
	Rate     float64         `json:"rate"`
	Latency  []time.Duration `json:"latency,omitempty"` // p50, p99
	Failures int64           `json:"failures"`
}

// RunLoad runs the load a spec describes; `meshcert-bench load` calls it.
func RunLoad(ctx context.Context, spec LoadSpec) LoadResult {
	d := newDriver(spec.URL, spec.CA, spec.Bodies)
	dur := time.Duration(spec.Seconds * float64(time.Second))
	if spec.Rate > 0 {
		lat := d.openLoop(ctx, spec.Rate, dur)
		return LoadResult{Rate: float64(len(lat)) / dur.Seconds(), Latency: []time.Duration{percentile(lat, 0.5), percentile(lat, 0.99)}, Failures: d.errors.Load()}
	}
	d.closedLoop(spec.Workers, time.Second)
	d.errors.Store(0)
	return LoadResult{Rate: d.closedLoop(spec.Workers, dur), Failures: d.errors.Load()}
}

// load runs a spec in a child process: this very binary, with the argument
// "load" and the spec on stdin.
func load(ctx context.Context, spec LoadSpec) (LoadResult, error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return LoadResult{}, err
	}
	cmd := exec.CommandContext(ctx, "/proc/self/exe", "load")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		return LoadResult{}, fmt.Errorf("load process: %w", err)
	}
	var res LoadResult
	if err := json.Unmarshal(out, &res); err != nil {
		return LoadResult{}, err
	}
	if res.Failures > 0 {
		return res, fmt.Errorf("%d of the load's requests to %s failed", res.Failures, spec.URL)
	}
	return res, nil
}

// maxRate is the best rate of a closed loop over a few concurrencies.
func maxRate(ctx context.Context, spec LoadSpec) (float64, error) {
	best := 0.0
	for _, workers := range []int{1, 2, 4, 8, 16} {
		spec.Workers = workers
		res, err := load(ctx, spec)
		if err != nil {
			return 0, err
		}
		best = max(best, res.Rate)
	}
	return best, nil
}
