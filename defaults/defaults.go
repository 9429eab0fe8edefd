// Package defaults fills in the fields of a Mesh that users may leave out.
// It is pure: it reads plain model types and returns what it would set, so the
// webhook can turn each change into one JSON patch operation and never rewrite
// fields it does not model.
package defaults

import (
	"strconv"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/internal/kuma"
)

// Defaults for a certmanager backend's issuerRef, as Kong Mesh documents them.
const (
	IssuerKind  = cmapi.IssuerKind
	IssuerGroup = "cert-manager.io"
)

// Change is one defaulted field: its location as JSON object keys and list
// indexes from the object's root, and the value it gets.
type Change struct {
	Path  []string
	Value string
}

// pointerEscaper escapes a JSON pointer segment (RFC 6901).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// Pointer renders the path as an RFC 6901 JSON pointer.
func (c Change) Pointer() string {
	var b strings.Builder
	for _, seg := range c.Path {
		b.WriteByte('/')
		b.WriteString(pointerEscaper.Replace(seg))
	}
	return b.String()
}

// IssuerRef returns ref with its kind and group defaulted. Validation and the
// reconciler read issuerRefs through it, so a Mesh stored before the defaulting
// webhook was installed means the same thing as one stored after.
func IssuerRef(ref cmmeta.IssuerReference) cmmeta.IssuerReference {
	if ref.Kind == "" {
		ref.Kind = IssuerKind
	}
	if ref.Group == "" {
		ref.Group = IssuerGroup
	}
	return ref
}

// Mesh returns the defaults a Mesh spec is missing, in backend order: the kind
// and group of every certmanager backend's issuerRef. A backend without an
// issuerRef object gets none, since the missing name is the error to report.
// An empty result means the spec is already defaulted.
func Mesh(spec kuma.MeshSpec) []Change {
	if spec.MTLS == nil {
		return nil
	}
	var changes []Change
	for i, b := range spec.MTLS.Backends {
		if b.CertManager == nil || !b.CertManager.HasIssuerRef {
			continue
		}
		ref := b.CertManager.IssuerRef
		defaulted := IssuerRef(ref)
		if ref.Kind != defaulted.Kind {
			changes = append(changes, issuerRefChange(i, "kind", defaulted.Kind))
		}
		if ref.Group != defaulted.Group {
			changes = append(changes, issuerRefChange(i, "group", defaulted.Group))
		}
	}
	return changes
}

func issuerRefChange(backend int, key, value string) Change {
	return Change{
		Path:  []string{"spec", "mtls", "backends", strconv.Itoa(backend), "conf", "issuerRef", key},
		Value: value,
	}
}

// MeshIdentity returns the defaults a MeshIdentity that meshcert serves is
// missing: the kind and group of the issuer in Kong Mesh's certmanager
// extension config, or in meshcert's issuer annotations. Any other identity,
// and one whose config does not parse, gets none.
func MeshIdentity(mid *kuma.MeshIdentityResource) []Change {
	conf, errs := mid.CertManagerConf()
	if len(errs) > 0 || !conf.HasIssuerRef {
		return nil
	}
	ref, defaulted := conf.IssuerRef, IssuerRef(conf.IssuerRef)
	var at func(key string) []string
	switch mid.ServedBy() {
	case kuma.ServedByExtension:
		at = func(key string) []string {
			return []string{"spec", "provider", "extension", "config", "issuerRef", key}
		}
	case kuma.ServedByAgent:
		annotation := map[string]string{"kind": kuma.IssuerKindAnnotation, "group": kuma.IssuerGroupAnnotation}
		at = func(key string) []string { return []string{"metadata", "annotations", annotation[key]} }
	default:
		return nil
	}
	var changes []Change
	if ref.Kind != defaulted.Kind {
		changes = append(changes, Change{Path: at("kind"), Value: defaulted.Kind})
	}
	if ref.Group != defaulted.Group {
		changes = append(changes, Change{Path: at("group"), Value: defaulted.Group})
	}
	return changes
}
