package kuma

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Digest is the SHA-256 of its parts, each ended by a zero byte so that
// ("ab", "c") and ("a", "bc") differ. Every stable hash in meshcert is one.
func Digest(parts ...string) [sha256.Size]byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// Hash is a short, stable digest of its parts, in hex.
func Hash(parts ...string) string {
	d := Digest(parts...)
	return hex.EncodeToString(d[:8])
}

// LabelValue returns s when it is a valid label value, or a shortened form
// that stays unique.
func LabelValue(s string) string {
	if len(validation.IsValidLabelValue(s)) == 0 {
		return s
	}
	short := strings.TrimRight(s[:min(len(s), 40)], "-_.")
	return short + "-" + Hash(s)
}

// LimitName cuts name so that it and suffix fit in an object name.
func LimitName(name, suffix string) string {
	const maxLen = validation.DNS1123SubdomainMaxLength
	if len(name)+len(suffix) <= maxLen {
		return name + suffix
	}
	h := "-" + Hash(name)
	return strings.TrimRight(name[:maxLen-len(suffix)-len(h)], "-.") + h + suffix
}
