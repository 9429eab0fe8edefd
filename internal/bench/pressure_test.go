package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseCPUPressure(t *testing.T) {
	tests := map[string]struct {
		text   string
		want   time.Duration
		wantOK bool
	}{
		"the kernel's file": {
			text:   "some avg10=35.05 avg60=18.10 avg300=10.92 total=19383981303\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
			want:   19383981303 * time.Microsecond,
			wantOK: true,
		},
		"an older kernel, without full": {
			text:   "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n",
			want:   42 * time.Microsecond,
			wantOK: true,
		},
		"full only":           {text: "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"},
		"no total":            {text: "some avg10=0.00 avg60=0.00 avg300=0.00\n"},
		"a negative total":    {text: "some total=-1\n"},
		"a total beyond time": {text: "some total=18446744073709551615\n"},
		"empty":               {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := parseCPUPressure(tc.text)
			if ok != tc.wantOK || got != tc.want {
				t.Errorf("parseCPUPressure(%q) = %v, %v; want %v, %v", tc.text, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestCPUPressureDuring(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Stalled all of the first 10 ms, none of the next 10, half of the last 20.
	p := &cpuPressure{samples: []stallSample{
		{at(0), 0}, {at(10), 10 * time.Millisecond}, {at(20), 10 * time.Millisecond}, {at(40), 20 * time.Millisecond},
	}}
	tests := map[string]struct {
		s      span
		want   float64
		wantOK bool
	}{
		"stalled throughout":        {s: span{at(2), at(8)}, want: 1, wantOK: true},
		"never stalled":             {s: span{at(12), at(18)}, want: 0, wantOK: true},
		"across samples":            {s: span{at(5), at(25)}, want: 0.375, wantOK: true},
		"all of them":               {s: span{at(0), at(40)}, want: 0.5, wantOK: true},
		"starting before the first": {s: span{at(-5), at(5)}},
		"ending after the last":     {s: span{at(30), at(45)}},
		"of no length":              {s: span{at(5), at(5)}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := p.during(tc.s)
			if ok != tc.wantOK || got < tc.want-1e-9 || got > tc.want+1e-9 {
				t.Errorf("during(%v–%v) = %v, %v; want %v, %v", tc.s.start.Sub(t0), tc.s.end.Sub(t0), got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func FuzzParseCPUPressure(f *testing.F) {
	f.Add("some avg10=35.05 avg60=18.10 avg300=10.92 total=19383981303\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
	f.Add("some total=+1 total=2\n")
	f.Add("full total=1\nsome\n")
	f.Fuzz(func(t *testing.T, text string) {
		d, ok := parseCPUPressure(text)
		if !ok {
			if d != 0 {
				t.Errorf("not ok, yet %v", d)
			}
			return
		}
		if !strings.Contains(text, "some") || !strings.Contains(text, "total=") || d < 0 {
			t.Errorf("parseCPUPressure(%q) = %v, ok", text, d)
		}
	})
}

func TestPressureNote(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// No stall over the first second, then stalled throughout the next.
	p := &cpuPressure{samples: []stallSample{{at(0), 0}, {at(1000), 0}, {at(2000), time.Second}}}
	// 20 round trips of 10 ms in the first second and one of 500 ms in the next.
	var trips []span
	for i := range 20 {
		trips = append(trips, span{at(i * 40), at(i*40 + 10)})
	}
	trips = append(trips, span{at(1200), at(1700)})
	got := pressureNote(p, nil, trips, trips[:20], 10*time.Millisecond, 10*time.Millisecond)
	for _, want := range []string{
		"agent's round trips: 0% at the median, 100% at the median of the slowest 5%, 100% for those slower than its p99;",
		"bare ones: 0% at the median, 0% at the median of the slowest 5%.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("pressureNote = %q; want it to contain %q", got, want)
		}
	}
	if got := pressureNote(nil, os.ErrNotExist, trips, trips, 0, 0); !strings.Contains(got, "not read: file does not exist") {
		t.Errorf("pressureNote without the file = %q", got)
	}
}
