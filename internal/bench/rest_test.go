package bench

import (
	"maps"
	"os"
	"testing"
	"time"
)

func TestGrowthBy(t *testing.T) {
	before := map[string]float64{
		`resource="certificaterequests",subresource="",verb="POST"`:      10,
		`resource="certificaterequests",subresource="status",verb="PUT"`: 20,
		`resource="leases",subresource="",verb="PUT"`:                    5,
	}
	after := map[string]float64{
		`resource="certificaterequests",subresource="",verb="POST"`:      110,
		`resource="certificaterequests",subresource="status",verb="PUT"`: 220,
		`resource="certificaterequests",subresource="",verb="DELETE"`:    100,
		`resource="leases",subresource="",verb="PUT"`:                    5,
	}
	tests := map[string]struct {
		labels []string
		want   map[string]float64
	}{
		"one label": {
			labels: []string{"verb"},
			want:   map[string]float64{"POST": 100, "PUT": 200, "DELETE": 100},
		},
		"several labels, the empty ones left out": {
			labels: []string{"resource", "subresource", "verb"},
			want: map[string]float64{
				"certificaterequests POST": 100, "certificaterequests status PUT": 200, "certificaterequests DELETE": 100,
			},
		},
		"a label no counter has": {
			labels: []string{"code"},
			want:   map[string]float64{},
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			if got := growthBy(before, after, test.labels...); !maps.Equal(got, test.want) {
				t.Errorf("growthBy(%v) = %v, want %v", test.labels, got, test.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
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
}

func TestReadResident(t *testing.T) {
	r, err := readResident(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// VmRSS is RssAnon, RssFile and RssShmem, which a test process hardly has.
	if r.anon == 0 || r.file == 0 || r.anon+r.file > r.total || r.anon+r.file < r.total*9/10 {
		t.Errorf("resident %d bytes: anonymous %d and file-backed %d do not add up", r.total, r.anon, r.file)
	}
	if _, err := readResident(-1); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
