package kuma

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Provider types of a MeshIdentity, and the extension name of Kong Mesh's
// cert-manager provider.
const (
	ProviderTypeBundled   = "Bundled"
	ProviderTypeSpire     = "Spire"
	ProviderTypeExtension = "Extension"
	CertManagerExtension  = "certmanager"
)

// Annotations on a MeshIdentity of type Spire that mark it as one meshcert's
// node agent serves, in the style of cert-manager's ingress annotations.
const (
	IssuerNameAnnotation   = "meshcert.io/issuer-name"
	IssuerKindAnnotation   = "meshcert.io/issuer-kind"
	IssuerGroupAnnotation  = "meshcert.io/issuer-group"
	CACertSecretAnnotation = "meshcert.io/ca-cert-secret"
	// MeshTrustAnnotation "Disabled" keeps meshcert from making a MeshTrust
	// for the identity, as Kuma's meshTrustCreation does for its own.
	MeshTrustAnnotation = "meshcert.io/mesh-trust"
	// MeshIdentityAnnotation names, on what meshcert makes for a
	// MeshIdentity (its MeshTrust, its CertificateRequests), that identity.
	MeshIdentityAnnotation = "meshcert.io/mesh-identity"
	// DataplaneAnnotation names, on a node agent's CertificateRequest, a
	// Dataplane of the identity asked for, <namespace>/<name>: where the
	// approver looks for a pod of the requesting node that is entitled to it.
	DataplaneAnnotation = "meshcert.io/dataplane"
	// DurationAnnotation is the lifetime of the identity's certificates, a
	// Go duration such as 24h.
	DurationAnnotation = "meshcert.io/duration"
)

// For the unix attestor, a Dataplane's annotations name the Unix user whose
// processes are that dataplane, and the node (the agent's --node-name) where
// they are: an agent serves only the Dataplanes bound to its node, and the
// approver approves their identities for that node's agent only.
const (
	UnixUIDAnnotation  = "meshcert.io/unix-uid"
	NodeNameAnnotation = "meshcert.io/node-name"
)

// ParseLifetime reads a DurationAnnotation value: a positive Go duration.
func ParseLifetime(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("must be a positive duration such as 24h or 90m")
	}
	return d, nil
}

// Lifetime is the lifetime of the identity's certificates: its
// DurationAnnotation, or DefaultExpiration when that is unset or invalid
// (validation reports an invalid one).
func (m *MeshIdentityResource) Lifetime() time.Duration {
	if d, err := ParseLifetime(m.Annotations[DurationAnnotation]); err == nil {
		return d
	}
	return DefaultExpiration
}

// MeshIdentityResource is the kuma.io/v1alpha1 MeshIdentity object. Its mesh
// is its kuma.io/mesh label. Its schema is structural, so only the
// extension's config is free-form.
type MeshIdentityResource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              MeshIdentitySpec `json:"spec,omitempty"`
	Status            json.RawMessage  `json:"status,omitempty"`
}

// MeshIdentitySpec is the part of a MeshIdentity's spec meshcert reads; the
// rest is kept as it is, since meshcert only ever patches.
type MeshIdentitySpec struct {
	Selector *IdentitySelector `json:"selector,omitempty"`
	SpiffeID *SpiffeID         `json:"spiffeID,omitempty"`
	Provider *Provider         `json:"provider,omitempty"`
}

// IdentitySelector is spec.selector.
type IdentitySelector struct {
	Dataplane *LabelSelector `json:"dataplane,omitempty"`
}

// LabelSelector is Kuma's label selector: matchLabels only.
type LabelSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// SpiffeID holds the Go templates of a SPIFFE ID; nil means Kuma's default.
type SpiffeID struct {
	TrustDomain *string `json:"trustDomain,omitempty"`
	Path        *string `json:"path,omitempty"`
}

// Provider is spec.provider.
type Provider struct {
	Type      string             `json:"type"`
	Bundled   json.RawMessage    `json:"bundled,omitempty"`
	Spire     json.RawMessage    `json:"spire,omitempty"`
	Extension *ProviderExtension `json:"extension,omitempty"`
}

// ProviderExtension is spec.provider.extension.
type ProviderExtension struct {
	Name   string          `json:"name"`
	Config json.RawMessage `json:"config,omitempty"`
}

// MeshName is the identity's mesh: its kuma.io/mesh label, else the default
// mesh, as Kuma reads it.
func (m *MeshIdentityResource) MeshName() string { return MeshOfSecret(m.Labels) }

// Paths of a MeshIdentity's fields that meshcert reads.
var (
	MetadataPath        = field.NewPath("metadata")
	AnnotationsPath     = MetadataPath.Child("annotations")
	SpiffeIDPath        = SpecPath.Child("spiffeID")
	ProviderPath        = SpecPath.Child("provider")
	ExtensionConfigPath = ProviderPath.Child("extension", "config")
)

// Serving says how meshcert serves a MeshIdentity.
type Serving int

const (
	// NotServed: any other identity, which meshcert leaves alone.
	NotServed Serving = iota
	// ServedByExtension: Kong Mesh's certmanager extension, which meshcert
	// guards: it checks and defaults the config, and keeps its MeshTrust.
	ServedByExtension
	// ServedByAgent: a Spire identity marked by meshcert's issuer
	// annotations, whose certificates meshcert's node agent serves.
	ServedByAgent
)

// ServedBy tells how meshcert serves the identity.
func (m *MeshIdentityResource) ServedBy() Serving {
	p := m.Spec.Provider
	switch {
	case p == nil:
		return NotServed
	case p.Type == ProviderTypeExtension && p.Extension != nil && p.Extension.Name == CertManagerExtension:
		return ServedByExtension
	case p.Type == ProviderTypeSpire && hasIssuerAnnotation(m.Annotations):
		return ServedByAgent
	}
	return NotServed
}

func hasIssuerAnnotation(a map[string]string) bool {
	for _, k := range []string{IssuerNameAnnotation, IssuerKindAnnotation, IssuerGroupAnnotation} {
		if _, ok := a[k]; ok {
			return true
		}
	}
	return false
}

// CertManagerConf reads the cert-manager configuration of a served identity:
// the extension's config, or meshcert's annotations. Every value of the wrong
// type in the config is a field error at its path.
func (m *MeshIdentityResource) CertManagerConf() (CertManagerConf, field.ErrorList) {
	var conf CertManagerConf
	switch m.ServedBy() {
	case ServedByExtension:
		raw := m.Spec.Provider.Extension.Config
		if len(raw) == 0 || string(raw) == "null" {
			return conf, nil
		}
		var doc any
		if err := json.Unmarshal(raw, &doc); err != nil {
			return conf, field.ErrorList{field.Invalid(ExtensionConfigPath, field.OmitValueType{}, fmt.Sprintf("is not valid JSON: %v", err))}
		}
		r := &reader{}
		if obj, ok := r.object(doc, ExtensionConfigPath); ok {
			r.certManagerConf(obj, ExtensionConfigPath, &conf)
		}
		return conf, r.errs
	case ServedByAgent:
		a := m.Annotations
		conf.HasIssuerRef = true
		conf.IssuerRef = cmmeta.IssuerReference{Name: a[IssuerNameAnnotation], Kind: a[IssuerKindAnnotation], Group: a[IssuerGroupAnnotation]}
		if name, ok := a[CACertSecretAnnotation]; ok {
			conf.CACert = &DataSource{Secret: &name}
		}
	}
	return conf, nil
}

// MeshIdentityResourceList is a list of MeshIdentities.
type MeshIdentityResourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshIdentityResource `json:"items"`
}

// MeshTrustResource is the kuma.io/v1alpha1 MeshTrust object.
type MeshTrustResource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              MeshTrustSpec    `json:"spec"`
	Status            *MeshTrustStatus `json:"status,omitempty"`
}

// Roots are the roots the MeshTrust holds. A bundle that does not parse adds
// nothing: it is the webhook's and Kuma's to reject.
func (mt *MeshTrustResource) Roots() []*x509.Certificate {
	var roots []*x509.Certificate
	for _, b := range mt.Spec.CABundles {
		if b.PEM == nil {
			continue
		}
		if certs, err := pki.DecodeX509CertificateSetBytes([]byte(b.PEM.Value)); err == nil {
			roots = append(roots, certs...)
		}
	}
	return roots
}

// MeshTrustSpec is spec of a MeshTrust.
type MeshTrustSpec struct {
	TrustDomain string     `json:"trustDomain"`
	CABundles   []CABundle `json:"caBundles"`
}

// CABundle is one of a MeshTrust's bundles; Kuma knows only type Pem.
type CABundle struct {
	Type string `json:"type"`
	PEM  *PEM   `json:"pem,omitempty"`
}

// PEM holds PEM-encoded CA certificates.
type PEM struct {
	Value string `json:"value"`
}

// MeshTrustStatus is a MeshTrust's status.
type MeshTrustStatus struct {
	Origin *Origin `json:"origin,omitempty"`
}

// Origin names, as a KRI, the MeshIdentity a MeshTrust was made from.
type Origin struct {
	KRI *string `json:"kri,omitempty"`
}

// MeshTrustResourceList is a list of MeshTrusts.
type MeshTrustResourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshTrustResource `json:"items"`
}

// DeepCopyObject implements runtime.Object.
func (m *MeshIdentityResource) DeepCopyObject() runtime.Object { return m.DeepCopy() }

// DeepCopy copies the MeshIdentity.
func (m *MeshIdentityResource) DeepCopy() *MeshIdentityResource {
	if m == nil {
		return nil
	}
	out := &MeshIdentityResource{TypeMeta: m.TypeMeta, Status: slices.Clone(m.Status)}
	m.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if s := m.Spec.Selector; s != nil {
		out.Spec.Selector = &IdentitySelector{}
		if s.Dataplane != nil {
			out.Spec.Selector.Dataplane = &LabelSelector{MatchLabels: maps.Clone(s.Dataplane.MatchLabels)}
		}
	}
	if id := m.Spec.SpiffeID; id != nil {
		out.Spec.SpiffeID = &SpiffeID{TrustDomain: clonePtr(id.TrustDomain), Path: clonePtr(id.Path)}
	}
	if p := m.Spec.Provider; p != nil {
		out.Spec.Provider = &Provider{Type: p.Type, Bundled: slices.Clone(p.Bundled), Spire: slices.Clone(p.Spire)}
		if e := p.Extension; e != nil {
			out.Spec.Provider.Extension = &ProviderExtension{Name: e.Name, Config: slices.Clone(e.Config)}
		}
	}
	return out
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// DeepCopyObject implements runtime.Object.
func (l *MeshIdentityResourceList) DeepCopyObject() runtime.Object {
	out := &MeshIdentityResourceList{TypeMeta: l.TypeMeta, Items: copyItems(l.Items)}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	return out
}

// DeepCopyObject implements runtime.Object.
func (m *MeshTrustResource) DeepCopyObject() runtime.Object { return m.DeepCopy() }

// DeepCopy copies the MeshTrust.
func (m *MeshTrustResource) DeepCopy() *MeshTrustResource {
	if m == nil {
		return nil
	}
	out := &MeshTrustResource{TypeMeta: m.TypeMeta, Spec: MeshTrustSpec{TrustDomain: m.Spec.TrustDomain}}
	m.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	for _, b := range m.Spec.CABundles {
		out.Spec.CABundles = append(out.Spec.CABundles, CABundle{Type: b.Type, PEM: clonePtr(b.PEM)})
	}
	if st := m.Status; st != nil {
		out.Status = &MeshTrustStatus{}
		if st.Origin != nil {
			out.Status.Origin = &Origin{KRI: clonePtr(st.Origin.KRI)}
		}
	}
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *MeshTrustResourceList) DeepCopyObject() runtime.Object {
	out := &MeshTrustResourceList{TypeMeta: l.TypeMeta, Items: copyItems(l.Items)}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	return out
}
