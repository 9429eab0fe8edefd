package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseResident(t *testing.T) {
	tests := map[string]struct {
		status  string
		want    uint64
		wantErr bool
	}{
		"VmRSS in kB":  {status: "Name:\tmeshcert\nVmPeak:\t  900 kB\nVmRSS:\t   1536 kB\nRssAnon:\t 1024 kB\n", want: 1536 * 1024},
		"no VmRSS":     {status: "Name:\tmeshcert\nVmPeak:\t  900 kB\n", wantErr: true},
		"not a number": {status: "VmRSS:\t many kB\n", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseResident(tc.status)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseResident = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestResidentBytesOfThisProcess(t *testing.T) {
	if rss, err := residentBytes(os.Getpid()); err != nil || rss == 0 {
		t.Errorf("residentBytes(self) = %d, %v", rss, err)
	}
	if _, err := residentBytes(-1); err == nil {
		t.Error("no error for a process that does not exist")
	}
}

func TestParseCPUSeconds(t *testing.T) {
	tests := map[string]struct {
		stat    string
		want    float64
		wantErr bool
	}{
		"plain command": {stat: "42 (etcd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0", want: 3},
		"a command with spaces and parentheses": {
			stat: "42 (kube (api) server) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 12 0", want: 0.03},
		"too few fields": {stat: "42 (etcd) S 1 42", wantErr: true},
		"no command":     {stat: "42 etcd S", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseCPUSeconds(tc.stat)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseCPUSeconds = %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseCounters(t *testing.T) {
	const text = `# HELP rest_client_requests_total Number of HTTP requests.
# TYPE rest_client_requests_total counter
rest_client_requests_total{code="200",host="127.0.0.1",method="GET"} 40
rest_client_requests_total{code="201",host="127.0.0.1",method="POST"} 3
rest_client_requests_total{code="200",host="127.0.0.1",method="PUT"} 2
rest_client_requests_total{code="200",host="127.0.0.1",method="DELETE"} 1
rest_client_requests_total_other{method="POST"} 100
rest_client_requests_totally 7
controller_runtime_reconcile_total{controller="dataplane",result="success"} 10
controller_runtime_reconcile_total{controller="meshidentity",result="error"} 2
controller_runtime_reconcile_time_seconds_count 99
`
	got, err := parseCounters(strings.NewReader(text))
	if want := (counters{requests: 46, writes: 6, reconciles: 12}); err != nil || got != want {
		t.Errorf("parseCounters = %+v, %v; want %+v", got, err, want)
	}
}

func TestMedianAndPercentile(t *testing.T) {
	tests := map[string]struct {
		values []time.Duration
		want   time.Duration
	}{
		"none":                      {want: 0},
		"one":                       {values: []time.Duration{7}, want: 7},
		"odd count, in any order":   {values: []time.Duration{9, 1, 30, 2, 8}, want: 8},
		"one slow round is ignored": {values: []time.Duration{5, 6, 500}, want: 6},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := median(tc.values); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.values, got, tc.want)
			}
		})
	}
	sorted := make([]int, 300)
	for i := range sorted {
		sorted[i] = i + 1
	}
	if got := percentile(sorted, 0.99); got != 298 {
		t.Errorf("p99 of 1..300 = %d, want the third slowest, 298", got)
	}
}

func TestSpread(t *testing.T) {
	at := time.Unix(1000, 0)
	tests := map[string]struct {
		fractions []float64
		times     []time.Time
		want      string
	}{
		"none": {want: "none"},
		"renewals over the lifetime, two in one second": {
			fractions: []float64{0.8, 0.7, 0.75},
			times:     []time.Time{at, at.Add(100 * time.Millisecond), at.Add(time.Second)},
			want:      "at 70%–80% of the lifetime (p5–p95), at most 2/s",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := spread(tc.fractions, tc.times); got != tc.want {
				t.Errorf("spread = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReport(t *testing.T) {
	rows := []Row{
		{ID: "P10", Measure: "agent's API writes idle", Ours: "0", Target: "0", Met: met(true)},
		{ID: "P2", Measure: "create a Mesh", Ours: "5.15 ms", Baseline: "2.65 ms", Ratio: "1.94×", Target: "≤ 1.15×", Met: met(false), Note: "one line."},
		{ID: "P1", Measure: "highest rate", Ours: "17162 req/s"},
	}
	want := "# meshcert benchmarks\n\n" +
		"Full run, today. Every baseline is measured in the same run; the method is in [docs/performance.md](../docs/performance.md).\n\n" +
		"| measure | meshcert | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n" +
		"| P1 highest rate | 17162 req/s | — | — | — | — |\n" +
		"| P2 create a Mesh | 5.15 ms | 2.65 ms | 1.94× | ≤ 1.15× | **no** |\n" +
		"| P10 agent's API writes idle | 0 | — | — | 0 | yes |\n" +
		"\n- P2: one line.\n"
	if got := Report("Full run, today.", rows); got != want {
		t.Errorf("Report:\n%s\nwant:\n%s", got, want)
	}
}
