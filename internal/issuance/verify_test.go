package issuance

import (
	"crypto/x509"
	"math/big"
	"testing"
	"time"
)

func TestRenewalTimeSpreads(t *testing.T) {
	leaf := &x509.Certificate{SerialNumber: big.NewInt(42), NotBefore: now, NotAfter: now.Add(100 * time.Second)}
	if a, b := RenewalTime(leaf, "ns/a"), RenewalTime(leaf, "ns/a"); !a.Equal(b) {
		t.Fatalf("renewal time is not stable: %s, %s", a, b)
	}
	seen := map[time.Time]bool{}
	for i := range 1000 {
		at := RenewalTime(leaf, "ns/dp-"+string(rune('a'+i%26))+big.NewInt(int64(i)).String())
		if off := at.Sub(now); off < 70*time.Second || off > 80*time.Second {
			t.Fatalf("renewal at %s, want within [70s, 80s]", off)
		}
		seen[at.Truncate(time.Second)] = true
	}
	if len(seen) < 9 {
		t.Errorf("1000 certificates issued together renew in only %d distinct seconds of 10", len(seen))
	}
}
