// Package validation checks Mesh objects. It is pure: it reads plain model
// types and a Lookup of the cluster objects a Mesh refers to, and returns field
// errors with full paths plus warnings, in the style of cert-manager's
// ValidateCertificateSpec.
package validation

import (
	"fmt"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/model"
)

// Lookup answers questions about the objects a Mesh refers to. The webhook
// serves it from its informer cache; tests serve it from maps.
// A nil object with a nil error means "not found"; an error means the lookup
// itself failed.
type Lookup interface {
	// SystemSecret returns the Secret of that name in the system namespace.
	SystemSecret(name string) (*corev1.Secret, error)
	// Issuer returns the state of the Issuer (in the system namespace) or
	// ClusterIssuer that a defaulted cert-manager.io issuerRef names.
	Issuer(ref cmmeta.IssuerReference) (*IssuerState, error)
	// IssuedBy counts the dataplanes of a mesh whose current certificate,
	// as meshcert delivered it, came from the backend.
	IssuedBy(mesh, backend string) (int, error)
}

// IssuerState is what validation needs of an Issuer or ClusterIssuer.
type IssuerState struct {
	Ready   bool
	Reason  string
	Message string
}

// Env is everything validation reads besides the Mesh itself.
type Env struct {
	SystemNamespace string
	Now             time.Time
	Lookup          Lookup
	// AllowUnsafeCASwitch lets an update enable a backend it adds, for
	// emergencies such as a compromised CA key.
	AllowUnsafeCASwitch bool
}

// Result is the outcome of validating a Mesh. Errors reject it; warnings are
// shown to the user (kubectl prints them as "Warning:" lines) and let it pass.
type Result struct {
	Errors   field.ErrorList
	Warnings []string
}

func (r *Result) warn(p *field.Path, format string, args ...any) {
	r.Warnings = append(r.Warnings, p.String()+": "+fmt.Sprintf(format, args...))
}

var supportedModes = []string{"STRICT", "PERMISSIVE"}

// ValidateMesh validates a parsed Mesh: Kuma's own rules for every mTLS
// backend, and meshcert's rules for certmanager backends.
func ValidateMesh(mesh model.Mesh, env Env) Result {
	var res Result
	mtls := mesh.Spec.MTLS
	if mtls == nil {
		return res
	}
	res.Errors = append(res.Errors, validateSharedMTLS(mtls, model.MTLSPath)...)

	hasCertManager := false
	for i, b := range mtls.Backends {
		if b.CertManager == nil {
			continue
		}
		hasCertManager = true
		confPath := model.BackendsPath.Index(i).Child("conf")
		confErrs := ValidateCertManagerConf(*b.CertManager, confPath)
		res.Errors = append(res.Errors, confErrs...)
		if len(confErrs) > 0 {
			// Looking up a malformed reference would only add noise.
			continue
		}
		if !mtls.SkipValidation && env.Lookup != nil {
			checkIssuer(*b.CertManager, confPath.Child("issuerRef"), env, &res)
			if ds := b.CertManager.CACert; ds != nil {
				_, errs, warnings := CACert(mesh.Name, *ds, confPath.Child("caCert"), env)
				res.Errors = append(res.Errors, errs...)
				res.Warnings = append(res.Warnings, warnings...)
			}
		}
		if ds := b.CertManager.CACert; ds != nil && ds.File != nil {
			res.warn(confPath.Child("caCert", "file"), "a file on the control plane cannot be checked by this webhook; prefer secret or inlineString")
		}
	}
	if mtls.SkipValidation && hasCertManager {
		res.warn(model.MTLSPath.Child("skipValidation"), "is true, so the issuer and caCert checks that look at other objects were skipped")
	}
	return res
}

// ValidateMeshUpdate validates an updated Mesh, and guards a CA rotation:
// dataplanes must trust a new backend's root before any certificate comes
// from it, so the update that adds a backend may not also enable it; and
// removing a backend that still issued current certificates draws a warning.
func ValidateMeshUpdate(old, mesh model.Mesh, env Env) Result {
	res := ValidateMesh(mesh, env)
	oldMTLS, newMTLS := old.Spec.MTLS, mesh.Spec.MTLS
	if !oldMTLS.Enabled() || newMTLS == nil {
		return res
	}
	enabled := newMTLS.EnabledBackend
	if newMTLS.Backend(enabled) != nil && oldMTLS.Backend(enabled) == nil && enabled != oldMTLS.EnabledBackend && !env.AllowUnsafeCASwitch {
		res.Errors = append(res.Errors, field.Forbidden(model.MTLSPath.Child("enabledBackend"), fmt.Sprintf(
			"backend %q is added by this same update, so no dataplane trusts its CA yet and every certificate it issues would be "+
				"rejected by peers still on %q. Rotate in two steps: add %q with enabledBackend still %q; once every dataplane's "+
				"ca.crt holds both roots, set enabledBackend to %q (meshcert's --allow-unsafe-ca-switch allows this in an emergency)",
			enabled, oldMTLS.EnabledBackend, enabled, oldMTLS.EnabledBackend, enabled)))
	}
	if env.Lookup == nil {
		return res
	}
	for _, b := range oldMTLS.Backends {
		if newMTLS.Backend(b.Name) != nil {
			continue
		}
		n, err := env.Lookup.IssuedBy(mesh.Name, b.Name)
		switch {
		case err != nil:
			res.warn(model.BackendsPath, "could not count the certificates of backend %q: %v", b.Name, err)
		case n > 0:
			res.warn(model.BackendsPath, "backend %s still issued the certificates of %d dataplanes: removing it now makes their peers reject them until they are reissued", b.Name, n)
		}
	}
	return res
}

// validateSharedMTLS applies the rules Kuma applies to every backend type, in
// Kuma's words.
func validateSharedMTLS(mtls *model.MTLS, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := sets.New[string]()
	for i, b := range mtls.Backends {
		bp := p.Child("backends").Index(i)
		if names.Has(b.Name) {
			errs = append(errs, field.Invalid(bp.Child("name"), b.Name, fmt.Sprintf("%q name is already used for another backend", b.Name)))
		}
		names.Insert(b.Name)
		if b.Mode != "" && !sets.New(supportedModes...).Has(b.Mode) {
			errs = append(errs, field.NotSupported(bp.Child("mode"), b.Mode, supportedModes))
		}
		if exp := b.DpCert.Expiration; exp != "" {
			if _, err := ParseKumaDuration(exp); err != nil {
				errs = append(errs, field.Invalid(bp.Child("dpCert", "rotation", "expiration"), exp, "has to be a valid format"))
			}
		}
		if timeout := b.DpCert.RequestTimeout; timeout != "" {
			if _, err := ParseKumaDuration(timeout); err != nil {
				errs = append(errs, field.Invalid(bp.Child("dpCert", "requestTimeout"), timeout, "has to be a valid format"))
			}
		}
	}
	if mtls.EnabledBackend != "" && !names.Has(mtls.EnabledBackend) {
		errs = append(errs, field.Invalid(p.Child("enabledBackend"), mtls.EnabledBackend, "has to be set to one of the backends in the mesh"))
	}
	return errs
}

// ValidateCertManagerConf checks a certmanager backend's conf on its own,
// without looking at other objects.
func ValidateCertManagerConf(conf model.CertManagerConf, p *field.Path) field.ErrorList {
	errs := ValidateIssuerRef(conf.IssuerRef, p.Child("issuerRef"))
	if ds := conf.CACert; ds != nil {
		errs = append(errs, validateDataSource(*ds, p.Child("caCert"))...)
	}
	return errs
}

// ValidateIssuerRef checks an issuerRef, reading an empty kind or group as
// its default.
func ValidateIssuerRef(ref cmmeta.IssuerReference, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch {
	case strings.TrimSpace(ref.Name) == "":
		errs = append(errs, field.Required(p.Child("name"), "the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"))
	default:
		for _, msg := range utilvalidation.IsDNS1123Subdomain(ref.Name) {
			errs = append(errs, field.Invalid(p.Child("name"), ref.Name, msg))
		}
	}
	ref = defaults.IssuerRef(ref)
	if ref.Group == defaults.IssuerGroup {
		if ref.Kind != cmapi.IssuerKind && ref.Kind != cmapi.ClusterIssuerKind {
			errs = append(errs, field.NotSupported(p.Child("kind"), ref.Kind, []string{cmapi.IssuerKind, cmapi.ClusterIssuerKind}))
		}
	} else {
		for _, msg := range utilvalidation.IsDNS1123Subdomain(ref.Group) {
			errs = append(errs, field.Invalid(p.Child("group"), ref.Group, msg))
		}
	}
	return errs
}

var dataSourceFields = "secret, inline, inlineString or file"

func validateDataSource(ds model.DataSource, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch set := ds.Sources(); len(set) {
	case 0:
		errs = append(errs, field.Required(p, "exactly one of "+dataSourceFields+" must be set"))
	case 1:
	default:
		errs = append(errs, field.Invalid(p, field.OmitValueType{}, fmt.Sprintf("exactly one of %s must be set, but %s are set", dataSourceFields, strings.Join(set, " and "))))
	}
	if ds.Secret != nil {
		name := *ds.Secret
		if strings.TrimSpace(name) == "" {
			errs = append(errs, field.Required(p.Child("secret"), "the name of a mesh Secret in the system namespace"))
		} else {
			for _, msg := range utilvalidation.IsDNS1123Subdomain(name) {
				errs = append(errs, field.Invalid(p.Child("secret"), name, msg))
			}
		}
	}
	return errs
}

// checkIssuer warns when a cert-manager issuer is missing or not Ready. It
// never rejects: users commonly apply the Mesh and the Issuer together.
func checkIssuer(conf model.CertManagerConf, p *field.Path, env Env, res *Result) {
	ref := defaults.IssuerRef(conf.IssuerRef)
	if ref.Group != defaults.IssuerGroup {
		return
	}
	var what string
	switch ref.Kind {
	case cmapi.IssuerKind:
		what = fmt.Sprintf("Issuer %s/%s", env.SystemNamespace, ref.Name)
	case cmapi.ClusterIssuerKind:
		what = fmt.Sprintf("ClusterIssuer %s", ref.Name)
	default:
		return
	}
	state, err := env.Lookup.Issuer(ref)
	found := state != nil
	switch {
	case err != nil:
		res.warn(p, "could not look up %s: %v", what, err)
	case !found && ref.Kind == cmapi.IssuerKind:
		res.warn(p, "%s not found: an Issuer must be in the system namespace %q (or use a ClusterIssuer); no dataplane certificate can be issued until it exists", what, env.SystemNamespace)
	case !found:
		res.warn(p, "%s not found: no dataplane certificate can be issued until it exists", what)
	case !state.Ready:
		detail := state.Reason
		if state.Message != "" {
			detail = strings.TrimSpace(detail + " " + state.Message)
		}
		if detail == "" {
			detail = "no Ready condition yet"
		}
		res.warn(p, "%s is not Ready (%s): no dataplane certificate can be issued until it is", what, detail)
	}
}

// CACert resolves and checks a certmanager backend's caCert the way Kuma
// does, and returns the PEM it names with its problems and warnings. A file
// source yields neither PEM nor problems: only the control plane can read it.
func CACert(mesh string, ds model.DataSource, p *field.Path, env Env) ([]byte, field.ErrorList, []string) {
	var (
		data     []byte
		at           = p
		badValue any = field.OmitValueType{}
	)
	switch {
	case ds.Secret != nil:
		name := *ds.Secret
		at, badValue = p.Child("secret"), name
		secret, err := meshSecret(mesh, name, at, env)
		if err != nil {
			return nil, field.ErrorList{err}, nil
		}
		data = secret.Data[model.SecretValueKey]
		if len(data) == 0 {
			return nil, field.ErrorList{field.Invalid(at, name, fmt.Sprintf("Secret %s/%s has no data.%s", env.SystemNamespace, name, model.SecretValueKey))}, nil
		}
	case ds.HasInline:
		at, data = p.Child("inline"), ds.Inline
	case ds.InlineString != nil:
		at, data = p.Child("inlineString"), []byte(*ds.InlineString)
	default:
		return nil, nil, nil
	}
	var errs field.ErrorList
	var warnings []string
	problems, warns := CAProblems(data, env.Now)
	for _, msg := range problems {
		errs = append(errs, field.Invalid(at, badValue, msg))
	}
	for _, msg := range warns {
		warnings = append(warnings, at.String()+": "+msg)
	}
	return data, errs, warnings
}

// meshSecret finds the mesh Secret a caCert names, and says which of Kuma's
// conditions it fails: it must be in the system namespace, of the mesh Secret
// type, and labelled for this mesh.
func meshSecret(mesh, name string, p *field.Path, env Env) (*corev1.Secret, *field.Error) {
	secret, err := env.Lookup.SystemSecret(name)
	ref := env.SystemNamespace + "/" + name
	switch {
	case err != nil:
		return nil, field.InternalError(p, fmt.Errorf("could not look up Secret %s: %w", ref, err))
	case secret == nil:
		return nil, &field.Error{Type: field.ErrorTypeNotFound, Field: p.String(), BadValue: name,
			Detail: fmt.Sprintf("no Secret %q in the system namespace %q, where mesh Secrets must be", name, env.SystemNamespace)}
	case secret.Type == model.GlobalSecretType:
		return nil, field.Invalid(p, name, fmt.Sprintf("Secret %s is a global secret (type %q); caCert needs a mesh Secret of type %q", ref, secret.Type, model.MeshSecretType))
	case secret.Type != model.MeshSecretType:
		return nil, field.Invalid(p, name, fmt.Sprintf("Secret %s has type %q; caCert needs a mesh Secret of type %q", ref, secret.Type, model.MeshSecretType))
	}
	if owner := model.MeshOfSecret(secret.Labels); owner != mesh {
		why := fmt.Sprintf("label %s=%s", model.MeshLabel, owner)
		if _, labelled := secret.Labels[model.MeshLabel]; !labelled {
			why = fmt.Sprintf("it has no %s label", model.MeshLabel)
		}
		return nil, field.Invalid(p, name, fmt.Sprintf("Secret %s belongs to mesh %q (%s), not to mesh %q", ref, owner, why, mesh))
	}
	return secret, nil
}
