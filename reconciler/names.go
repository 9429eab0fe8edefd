package reconciler

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// hash is a short, stable digest of its parts.
func hash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// labelValue returns s when it is a valid label value, or a shortened form
// that stays unique.
func labelValue(s string) string {
	if len(validation.IsValidLabelValue(s)) == 0 {
		return s
	}
	short := strings.TrimRight(s[:min(len(s), 40)], "-_.")
	return short + "-" + hash(s)
}

// limitName cuts name so that it and suffix fit in an object name.
func limitName(name, suffix string) string {
	const maxLen = validation.DNS1123SubdomainMaxLength
	if len(name)+len(suffix) <= maxLen {
		return name + suffix
	}
	h := "-" + hash(name)
	return strings.TrimRight(name[:maxLen-len(suffix)-len(h)], "-.") + h + suffix
}

// SecretName is the name of the Secret delivered for a dataplane, in its namespace.
func SecretName(dataplane string) string {
	return limitName(dataplane, "-mtls")
}

// requestName is deterministic in the dataplane and what is being issued, so a
// restarted reconciler finds its own request instead of adding another. The
// previous certificate's serial makes each renewal a new name.
func requestName(dp types.NamespacedName, identityHash, issuerHash, previousSerial string) string {
	return limitName(dp.Namespace+"."+dp.Name, "-"+hash(dp.String(), identityHash, issuerHash, previousSerial)[:10])
}
