package dataplane

import (
	"strings"
	"testing"
)

func TestSecretName(t *testing.T) {
	long := strings.Repeat("a", 253)
	tests := map[string]struct {
		dataplane string
		want      string
	}{
		"a short name keeps it":                            {dataplane: "web-1", want: "web-1-mtls"},
		"the longest name is cut to fit, and stays unique": {dataplane: long},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := SecretName(tc.dataplane)
			if len(got) > 253 || !strings.HasSuffix(got, "-mtls") {
				t.Errorf("SecretName(%q) = %q: over 253 characters, or not ending in -mtls", tc.dataplane, got)
			}
			if tc.want != "" && got != tc.want {
				t.Errorf("SecretName(%q) = %q, want %q", tc.dataplane, got, tc.want)
			}
		})
	}
	if SecretName(long) == SecretName(long[1:]) {
		t.Error("shortened Secret names collide")
	}
}
