package kuma

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMeshIdentityLifetime(t *testing.T) {
	tests := map[string]struct {
		annotations map[string]string
		want        time.Duration
		wantErr     bool
	}{
		"unset":              {want: DefaultExpiration, wantErr: true},
		"the annotation":     {annotations: map[string]string{DurationAnnotation: "90m"}, want: 90 * time.Minute},
		"not a duration":     {annotations: map[string]string{DurationAnnotation: "a day"}, want: DefaultExpiration, wantErr: true},
		"not a positive one": {annotations: map[string]string{DurationAnnotation: "-1h"}, want: DefaultExpiration, wantErr: true},
		"zero":               {annotations: map[string]string{DurationAnnotation: "0s"}, want: DefaultExpiration, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			mid := &MeshIdentityResource{ObjectMeta: metav1.ObjectMeta{Annotations: tc.annotations}}
			if got := mid.Lifetime(); got != tc.want {
				t.Errorf("Lifetime() = %s, want %s", got, tc.want)
			}
			if _, err := ParseLifetime(tc.annotations[DurationAnnotation]); (err != nil) != tc.wantErr {
				t.Errorf("ParseLifetime(%q) error = %v, want error %t", tc.annotations[DurationAnnotation], err, tc.wantErr)
			}
		})
	}
}
