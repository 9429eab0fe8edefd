package kuma

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

var kumaDuration = regexp.MustCompile(`^(\d+)(y|w|d|h|m|s|ms)$`)

var kumaDurationUnits = map[string]time.Duration{
	"y":  365 * 24 * time.Hour,
	"w":  7 * 24 * time.Hour,
	"d":  24 * time.Hour,
	"h":  time.Hour,
	"m":  time.Minute,
	"s":  time.Second,
	"ms": time.Millisecond,
}

// ParseKumaDuration parses Kuma's duration format: a whole number followed by
// one of y, w, d, h, m, s or ms, or the bare "0".
func ParseKumaDuration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	m := kumaDuration.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a duration such as 24h, 7d or 500ms", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	unit := kumaDurationUnits[m[2]]
	if err != nil || n > int64(1<<63-1)/int64(unit) {
		return 0, fmt.Errorf("%q is too long", s)
	}
	return time.Duration(n) * unit, nil
}

// DefaultExpiration is a dataplane certificate's lifetime when its backend
// sets no dpCert.rotation.expiration, as in Kuma.
const DefaultExpiration = 24 * time.Hour

// Lifetime is the certificate lifetime dpCert asks for: its
// rotation.expiration, or Kuma's default when that is unset, zero or invalid
// (validation reports an invalid one).
func (d DpCert) Lifetime() time.Duration {
	if v, err := ParseKumaDuration(d.Expiration); err == nil && v > 0 {
		return v
	}
	return DefaultExpiration
}

// RequestTimeoutOr is dpCert.requestTimeout, or fallback when that is unset,
// zero or invalid.
func (d DpCert) RequestTimeoutOr(fallback time.Duration) time.Duration {
	if v, err := ParseKumaDuration(d.RequestTimeout); err == nil && v > 0 {
		return v
	}
	return fallback
}
