package kuma

import (
	"encoding/base64"
	"encoding/json"
	"fmt"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Backend types of spec.mtls.backends[].type.
const (
	BackendTypeCertManager = "certmanager"
	BackendTypeBuiltin     = "builtin"
	BackendTypeProvided    = "provided"
)

// Mesh is a kuma.io/v1alpha1 Mesh: cluster-scoped, so its name is its identity.
type Mesh struct {
	Name string
	// KeyAlgorithm is its meshcert.io/key-algorithm annotation, when set.
	KeyAlgorithm *string
	Spec         MeshSpec
}

// MeshSpec is the part of a Mesh spec that meshcert reads.
type MeshSpec struct {
	MTLS *MTLS
}

// MeshServicesExclusive is the spec.meshServices.mode without which Kuma
// 2.14 never marks a MeshIdentity of the mesh Ready.
const MeshServicesExclusive = "Exclusive"

// MeshServicesMode reads spec.meshServices.mode of a Mesh's raw spec: "" when
// it is unset or not a string.
func MeshServicesMode(spec []byte) string {
	var s struct {
		MeshServices struct {
			Mode any `json:"mode"`
		} `json:"meshServices"`
	}
	if json.Unmarshal(spec, &s) != nil {
		return ""
	}
	mode, _ := s.MeshServices.Mode.(string)
	return mode
}

// MTLS is spec.mtls.
type MTLS struct {
	EnabledBackend string
	Backends       []Backend
	SkipValidation bool
}

// Enabled reports whether mTLS is on, which Kuma decides by a non-empty enabledBackend.
func (m *MTLS) Enabled() bool { return m != nil && m.EnabledBackend != "" }

// Backend returns the backend with the given name, or nil.
func (m *MTLS) Backend(name string) *Backend {
	if m == nil {
		return nil
	}
	for i := range m.Backends {
		if m.Backends[i].Name == name {
			return &m.Backends[i]
		}
	}
	return nil
}

// EnabledCertManagerBackend returns the enabled backend when it is of type
// certmanager, or nil.
func (s MeshSpec) EnabledCertManagerBackend() *Backend {
	if !s.MTLS.Enabled() {
		return nil
	}
	b := s.MTLS.Backend(s.MTLS.EnabledBackend)
	if b == nil || b.CertManager == nil {
		return nil
	}
	return b
}

// Backend is one entry of spec.mtls.backends.
type Backend struct {
	Name string
	Type string
	Mode string
	// DpCert holds dpCert.rotation.expiration and dpCert.requestTimeout
	// unparsed, so validation can report them in Kuma's words.
	DpCert DpCert
	// CertManager is the parsed conf of a certmanager backend, nil for other types.
	CertManager *CertManagerConf
	// ProvidedCert is the conf.cert of a provided backend: its CA certificate.
	ProvidedCert *DataSource
	// Malformed says a value of this backend has the wrong type: its rules
	// are not checked, since they would read a half-parsed backend.
	Malformed bool
}

// DpCert is spec.mtls.backends[].dpCert.
type DpCert struct {
	Expiration     string
	RequestTimeout string
}

// CertManagerConf is the conf of a certmanager backend.
type CertManagerConf struct {
	// IssuerRef is conf.issuerRef. HasIssuerRef tells whether it was given as
	// an object at all, which defaulting needs in order to patch inside it.
	IssuerRef    cmmeta.IssuerReference
	HasIssuerRef bool
	// CACert is conf.caCert, or nil when absent.
	CACert *DataSource
}

// DataSource is Kuma's DataSource: exactly one of its fields should be set. The
// fields are pointers so that a source given as "" still counts as given.
type DataSource struct {
	Secret       *string
	Inline       []byte // decoded from base64
	HasInline    bool
	InlineString *string
	File         *string
}

// Sources lists the JSON names of the sources that are set, in a fixed order.
func (d DataSource) Sources() []string {
	var set []string
	if d.Secret != nil {
		set = append(set, "secret")
	}
	if d.HasInline {
		set = append(set, "inline")
	}
	if d.InlineString != nil {
		set = append(set, "inlineString")
	}
	if d.File != nil {
		set = append(set, "file")
	}
	return set
}

// Paths of the fields meshcert reads, rooted at the object.
var (
	SpecPath     = field.NewPath("spec")
	MTLSPath     = SpecPath.Child("mtls")
	BackendsPath = MTLSPath.Child("backends")
)

// ParseMeshSpec reads a Mesh spec from its JSON. A spec that is absent or null
// is an empty spec. Every value of the wrong type is reported as a field error;
// the fields that parsed are returned either way.
func ParseMeshSpec(raw []byte) (MeshSpec, field.ErrorList) {
	var doc any
	if len(raw) == 0 {
		return MeshSpec{}, nil
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return MeshSpec{}, field.ErrorList{field.Invalid(SpecPath, field.OmitValueType{}, fmt.Sprintf("is not valid JSON: %v", err))}
	}
	return MeshSpecFrom(doc)
}

// MeshSpecFrom reads a Mesh spec from its decoded JSON, as ParseMeshSpec does.
func MeshSpecFrom(doc any) (MeshSpec, field.ErrorList) {
	var spec MeshSpec
	r := &reader{}
	if obj, ok := r.object(doc, SpecPath); ok {
		if mtls, ok := r.optObject(obj, "mtls", MTLSPath); ok {
			spec.MTLS = r.mtls(mtls, MTLSPath)
		}
	}
	return spec, r.errs
}

func (r *reader) mtls(obj map[string]any, p *field.Path) *MTLS {
	m := &MTLS{
		EnabledBackend: r.str(obj, "enabledBackend", p),
		SkipValidation: r.boolean(obj, "skipValidation", p),
	}
	for i, item := range r.array(obj, "backends", p) {
		bp := p.Child("backends").Index(i)
		before := len(r.errs)
		var b Backend
		if obj, ok := r.object(item, bp); ok {
			b = r.backend(obj, bp)
		}
		// Keep the index aligned with the JSON, so paths and patches stay
		// right, and mark a backend whose values did not all parse.
		b.Malformed = len(r.errs) > before
		m.Backends = append(m.Backends, b)
	}
	return m
}

func (r *reader) backend(obj map[string]any, p *field.Path) Backend {
	b := Backend{
		Name: r.str(obj, "name", p),
		Type: r.str(obj, "type", p),
		Mode: r.str(obj, "mode", p),
	}
	if dp, ok := r.optObject(obj, "dpCert", p.Child("dpCert")); ok {
		dpPath := p.Child("dpCert")
		b.DpCert.RequestTimeout = r.str(dp, "requestTimeout", dpPath)
		if rot, ok := r.optObject(dp, "rotation", dpPath.Child("rotation")); ok {
			b.DpCert.Expiration = r.str(rot, "expiration", dpPath.Child("rotation"))
		}
	}
	switch b.Type {
	case BackendTypeCertManager:
		conf := &CertManagerConf{}
		if c, ok := r.optObject(obj, "conf", p.Child("conf")); ok {
			r.certManagerConf(c, p.Child("conf"), conf)
		}
		b.CertManager = conf
	case BackendTypeProvided:
		// Read for its root only: meshcert does not validate backends it
		// does not own, so this reader's errors are dropped.
		lenient := &reader{}
		if c, ok := lenient.optObject(obj, "conf", p.Child("conf")); ok {
			if cert, ok := lenient.optObject(c, "cert", p.Child("conf", "cert")); ok {
				b.ProvidedCert = lenient.dataSource(cert, p.Child("conf", "cert"))
			}
		}
	}
	return b
}

func (r *reader) certManagerConf(obj map[string]any, p *field.Path, conf *CertManagerConf) {
	if ref, ok := r.optObject(obj, "issuerRef", p.Child("issuerRef")); ok {
		rp := p.Child("issuerRef")
		conf.HasIssuerRef = true
		conf.IssuerRef = cmmeta.IssuerReference{
			Name:  r.str(ref, "name", rp),
			Kind:  r.str(ref, "kind", rp),
			Group: r.str(ref, "group", rp),
		}
	}
	if ca, ok := r.optObject(obj, "caCert", p.Child("caCert")); ok {
		conf.CACert = r.dataSource(ca, p.Child("caCert"))
	}
}

func (r *reader) dataSource(obj map[string]any, p *field.Path) *DataSource {
	d := &DataSource{
		Secret:       r.optStr(obj, "secret", p),
		InlineString: r.optStr(obj, "inlineString", p),
		File:         r.optStr(obj, "file", p),
	}
	if s := r.optStr(obj, "inline", p); s != nil {
		d.HasInline = true
		decoded, err := base64.StdEncoding.DecodeString(*s)
		if err != nil {
			r.errs = append(r.errs, field.Invalid(p.Child("inline"), field.OmitValueType{}, "must be base64-encoded PEM"))
		}
		d.Inline = decoded
	}
	return d
}

// reader walks decoded JSON and collects a field error for each value of the
// wrong type. Absent and null values are not errors: Kuma treats both as unset.
type reader struct {
	errs field.ErrorList
}

func (r *reader) typeError(p *field.Path, v any, want string) {
	r.errs = append(r.errs, field.TypeInvalid(p, field.OmitValueType{}, fmt.Sprintf("must be %s, not %s", want, jsonTypeName(v))))
}

func (r *reader) object(v any, p *field.Path) (map[string]any, bool) {
	switch t := v.(type) {
	case map[string]any:
		return t, true
	case nil:
		return nil, false
	default:
		r.typeError(p, v, "an object")
		return nil, false
	}
}

func (r *reader) optObject(obj map[string]any, key string, p *field.Path) (map[string]any, bool) {
	return r.object(obj[key], p)
}

func (r *reader) array(obj map[string]any, key string, p *field.Path) []any {
	switch t := obj[key].(type) {
	case []any:
		return t
	case nil:
		return nil
	default:
		r.typeError(p.Child(key), t, "a list")
		return nil
	}
}

func (r *reader) optStr(obj map[string]any, key string, p *field.Path) *string {
	switch t := obj[key].(type) {
	case string:
		return &t
	case nil:
		return nil
	default:
		r.typeError(p.Child(key), t, "a string")
		return nil
	}
}

func (r *reader) str(obj map[string]any, key string, p *field.Path) string {
	if s := r.optStr(obj, key, p); s != nil {
		return *s
	}
	return ""
}

func (r *reader) boolean(obj map[string]any, key string, p *field.Path) bool {
	switch t := obj[key].(type) {
	case bool:
		return t
	case nil:
		return false
	default:
		r.typeError(p.Child(key), t, "a boolean")
		return false
	}
}

// jsonTypeName names a decoded JSON value's type, for error messages that
// must not echo the value itself (it may be large or sensitive).
func jsonTypeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	default:
		return "null"
	}
}
