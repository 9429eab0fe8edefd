package kuma

import (
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	long := strings.Repeat("a", 253)
	tests := map[string]struct {
		got     string
		want    string
		wantMax int
	}{
		"a short name is kept":            {got: LimitName("web", "-x"), want: "web-x", wantMax: 253},
		"the longest name is cut":         {got: LimitName(long, "-suffix"), wantMax: 253},
		"a valid label value is kept":     {got: LabelValue("demo"), want: "demo", wantMax: 63},
		"a long label value is shortened": {got: LabelValue(long), wantMax: 63},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if len(tc.got) > tc.wantMax {
				t.Errorf("%q is %d long, over %d", tc.got, len(tc.got), tc.wantMax)
			}
			if tc.want != "" && tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
	if LabelValue(long) == LabelValue(long[1:]) {
		t.Error("shortened label values collide")
	}
	if LimitName(long, "-s") == LimitName(long[1:], "-s") {
		t.Error("shortened names collide")
	}
}
