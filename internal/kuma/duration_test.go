package kuma

import (
	"testing"
	"time"
)

func TestParseKumaDuration(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		"zero":              {in: "0"},
		"milliseconds":      {in: "500ms", want: 500 * time.Millisecond},
		"seconds":           {in: "10s", want: 10 * time.Second},
		"minutes":           {in: "5m", want: 5 * time.Minute},
		"hours":             {in: "24h", want: 24 * time.Hour},
		"days":              {in: "7d", want: 7 * 24 * time.Hour},
		"weeks":             {in: "2w", want: 14 * 24 * time.Hour},
		"years":             {in: "1y", want: 365 * 24 * time.Hour},
		"Go compound":       {in: "1h30m", wantErr: true},
		"fraction":          {in: "1.5h", wantErr: true},
		"no unit":           {in: "10", wantErr: true},
		"negative":          {in: "-1h", wantErr: true},
		"empty":             {in: "", wantErr: true},
		"space":             {in: "1 h", wantErr: true},
		"overflow":          {in: "99999999999999y", wantErr: true},
		"huge number":       {in: "99999999999999999999999s", wantErr: true},
		"uppercase unit":    {in: "1H", wantErr: true},
		"zero with unit ok": {in: "0s"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseKumaDuration(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseKumaDuration(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("ParseKumaDuration(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}
