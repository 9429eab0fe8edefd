// Package validation holds the rules over a Mesh and its backends: Kuma's own,
// in Kuma's words, and meshcert's for certmanager backends. It is pure: it
// reads plain model types and what package lookup resolves, and returns
// every independent problem at once as field errors with full paths, plus
// warnings, in the style of cert-manager's ValidateCertificateSpec.
package validation

import (
	"fmt"
	"slices"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
)

// Env is everything validation reads besides the Mesh itself.
type Env struct {
	lookup.Env
	// LocalZone is the zone of a MeshIdentity's trust domain when it has no
	// kuma.io/zone label.
	LocalZone string
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
// backend, and meshcert's rules for certmanager backends. A backend whose
// values did not parse is left to its type errors.
func ValidateMesh(mesh kuma.Mesh, env Env) Result {
	var res Result
	if alg := mesh.KeyAlgorithm; alg != nil {
		res.Errors = append(res.Errors, validateKeyAlgorithm(*alg)...)
	}
	mtls := mesh.Spec.MTLS
	if mtls == nil {
		return res
	}
	res.Errors = append(res.Errors, validateSharedMTLS(mtls, kuma.MTLSPath)...)

	// skipValidation skips, as in Kuma, the checks that look at other objects.
	if mtls.SkipValidation {
		env.Lookup = nil
	}
	hasCertManager := false
	for i, b := range mtls.Backends {
		if b.CertManager == nil || b.Malformed {
			continue
		}
		hasCertManager = true
		res.add(validateCertManagerConf(mesh.Name, *b.CertManager, kuma.BackendsPath.Index(i).Child("conf"), env))
	}
	if mtls.SkipValidation && hasCertManager {
		res.warn(kuma.MTLSPath.Child("skipValidation"), "is true, so the issuer and caCert checks that look at other objects were skipped")
	}
	return res
}

// ValidateMeshUpdate validates an updated Mesh once: every rule of
// ValidateMesh, and a guard on CA rotation. Dataplanes must trust a new
// backend's root before any certificate comes from it, so the update that
// adds a backend may not also enable it; and removing a backend that still
// issued current certificates draws a warning.
func ValidateMeshUpdate(old, mesh kuma.Mesh, env Env) Result {
	res := ValidateMesh(mesh, env)
	oldMTLS, newMTLS := old.Spec.MTLS, mesh.Spec.MTLS
	if !oldMTLS.Enabled() || newMTLS == nil {
		return res
	}
	enabled := newMTLS.EnabledBackend
	if newMTLS.Backend(enabled) != nil && oldMTLS.Backend(enabled) == nil && enabled != oldMTLS.EnabledBackend && !env.AllowUnsafeCASwitch {
		res.Errors = append(res.Errors, field.Forbidden(kuma.MTLSPath.Child("enabledBackend"), fmt.Sprintf(
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
			res.warn(kuma.BackendsPath, "could not count the certificates of backend %q: %v", b.Name, err)
		case n > 0:
			res.warn(kuma.BackendsPath, "backend %s still issued the certificates of %d dataplanes: removing it now makes their peers reject them until they are reissued", b.Name, n)
		}
	}
	return res
}

// validateCertManagerConf checks a cert-manager configuration at p: its
// issuerRef, and its caCert. Each lookup depends only on its own reference
// being well formed.
func validateCertManagerConf(mesh string, conf kuma.CertManagerConf, p *field.Path, env Env) Result {
	var res Result
	refPath := p.Child("issuerRef")
	res.Errors = ValidateIssuerRef(conf.IssuerRef, refPath)
	if env.Lookup != nil && len(res.Errors) == 0 {
		checkIssuer(conf.IssuerRef, refPath, env, &res)
	}
	if ds := conf.CACert; ds != nil {
		res.add(validateCACertSource(mesh, *ds, p.Child("caCert"), env))
	}
	return res
}

// validateCACertSource checks a caCert data source, and the material it
// names when env has a Lookup: it is read only from one well-formed source.
func validateCACertSource(mesh string, ds kuma.DataSource, p *field.Path, env Env) Result {
	var res Result
	switch dsErrs := validateDataSource(ds, p); {
	case len(dsErrs) > 0:
		res.Errors = dsErrs
	case ds.File != nil:
		res.warn(p.Child("file"), "a file on the control plane cannot be checked by this webhook; prefer secret or inlineString")
	case env.Lookup != nil:
		res.add(ValidateCACert(mesh, ds, p, env))
	}
	return res
}

// validateKeyAlgorithm checks a meshcert.io/key-algorithm annotation.
func validateKeyAlgorithm(alg string) field.ErrorList {
	if slices.Contains(kuma.KeyAlgorithms, alg) {
		return nil
	}
	return field.ErrorList{field.NotSupported(kuma.AnnotationsPath.Key(kuma.KeyAlgorithmAnnotation), alg, kuma.KeyAlgorithms)}
}

// validateSharedMTLS applies the rules Kuma applies to every backend type, in
// Kuma's words.
func validateSharedMTLS(mtls *kuma.MTLS, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := sets.New[string]()
	allParsed := true
	for i, b := range mtls.Backends {
		if b.Malformed {
			allParsed = false
			continue
		}
		bp := p.Child("backends").Index(i)
		if names.Has(b.Name) {
			errs = append(errs, field.Invalid(bp.Child("name"), b.Name, fmt.Sprintf("%q name is already used for another backend", b.Name)))
		}
		names.Insert(b.Name)
		if b.Mode != "" && !sets.New(supportedModes...).Has(b.Mode) {
			errs = append(errs, field.NotSupported(bp.Child("mode"), b.Mode, supportedModes))
		}
		if exp := b.DpCert.Expiration; exp != "" {
			if _, err := kuma.ParseKumaDuration(exp); err != nil {
				errs = append(errs, field.Invalid(bp.Child("dpCert", "rotation", "expiration"), exp, "has to be a valid format"))
			}
		}
		if timeout := b.DpCert.RequestTimeout; timeout != "" {
			if _, err := kuma.ParseKumaDuration(timeout); err != nil {
				errs = append(errs, field.Invalid(bp.Child("dpCert", "requestTimeout"), timeout, "has to be a valid format"))
			}
		}
	}
	// Whether enabledBackend names a backend is known only once every name parsed.
	if allParsed && mtls.EnabledBackend != "" && !names.Has(mtls.EnabledBackend) {
		errs = append(errs, field.Invalid(p.Child("enabledBackend"), mtls.EnabledBackend, "has to be set to one of the backends in the mesh"))
	}
	return errs
}

// ValidateIssuerRef checks an issuerRef, reading an empty kind or group as
// its default.
func ValidateIssuerRef(ref cmmeta.IssuerReference, p *field.Path) field.ErrorList {
	return validateIssuerRef(ref, p.Child("name"), p.Child("kind"), p.Child("group"))
}

// validateIssuerRef checks an issuerRef whose fields are at the given paths.
func validateIssuerRef(ref cmmeta.IssuerReference, name, kind, group *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch {
	case strings.TrimSpace(ref.Name) == "":
		errs = append(errs, field.Required(name, "the name of the cert-manager Issuer or ClusterIssuer that signs this mesh's dataplane certificates"))
	default:
		for _, msg := range utilvalidation.IsDNS1123Subdomain(ref.Name) {
			errs = append(errs, field.Invalid(name, ref.Name, msg))
		}
	}
	ref = defaults.IssuerRef(ref)
	if ref.Group == defaults.IssuerGroup {
		if ref.Kind != cmapi.IssuerKind && ref.Kind != cmapi.ClusterIssuerKind {
			errs = append(errs, field.NotSupported(kind, ref.Kind, []string{cmapi.IssuerKind, cmapi.ClusterIssuerKind}))
		}
	} else {
		for _, msg := range utilvalidation.IsDNS1123Subdomain(ref.Group) {
			errs = append(errs, field.Invalid(group, ref.Group, msg))
		}
	}
	return errs
}

var dataSourceFields = "secret, inline, inlineString or file"

func validateDataSource(ds kuma.DataSource, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch set := ds.Sources(); len(set) {
	case 0:
		errs = append(errs, field.Required(p, "exactly one of "+dataSourceFields+" must be set"))
	case 1:
	default:
		errs = append(errs, field.Invalid(p, field.OmitValueType{}, fmt.Sprintf("exactly one of %s must be set, but %s are set", dataSourceFields, strings.Join(set, " and "))))
	}
	if ds.Secret != nil {
		errs = append(errs, validateSecretName(*ds.Secret, p.Child("secret"))...)
	}
	return errs
}

// validateSecretName checks the name of a mesh Secret.
func validateSecretName(name string, p *field.Path) field.ErrorList {
	if strings.TrimSpace(name) == "" {
		return field.ErrorList{field.Required(p, "the name of a mesh Secret in the system namespace")}
	}
	var errs field.ErrorList
	for _, msg := range utilvalidation.IsDNS1123Subdomain(name) {
		errs = append(errs, field.Invalid(p, name, msg))
	}
	return errs
}

// checkIssuer warns when a cert-manager issuer is missing or not Ready. It
// never rejects: users commonly apply the Mesh and the Issuer together.
func checkIssuer(ref cmmeta.IssuerReference, p *field.Path, env Env, res *Result) {
	_, problem := lookup.IssuerProblem(defaults.IssuerRef(ref), env.Env)
	switch {
	case problem == nil:
	case problem.Type == lookup.NotFound:
		res.warn(p, "%s; no dataplane certificate can be issued until it exists", problem.Message)
	case problem.Type == lookup.Invalid:
		res.warn(p, "%s: no dataplane certificate can be issued until it is", problem.Message)
	default:
		res.warn(p, "%s", problem.Message)
	}
}

// ValidateCACert resolves a well-formed caCert data source and reports, at
// the path of the field it read, why the material it names cannot be used.
func ValidateCACert(mesh string, ds kuma.DataSource, p *field.Path, env Env) Result {
	if set := ds.Sources(); len(set) == 1 {
		p = p.Child(set[0])
	}
	return validateCAMaterial(mesh, ds, p, env)
}

// validateCAMaterial reports at p why the CA material that ds names cannot
// be used.
func validateCAMaterial(mesh string, ds kuma.DataSource, p *field.Path, env Env) Result {
	var res Result
	ca := lookup.ResolveCACert(mesh, ds, env.Env)
	if ca.Source == "" {
		return res
	}
	var badValue any = field.OmitValueType{}
	if ds.Secret != nil {
		badValue = *ds.Secret
	}
	if u := ca.Unresolved; u != nil {
		res.Errors = append(res.Errors, problemError(p, u))
		return res
	}
	for _, msg := range ca.Problems {
		res.Errors = append(res.Errors, field.Invalid(p, badValue, msg))
	}
	for _, msg := range ca.Warnings {
		res.warn(p, "%s", msg)
	}
	return res
}

// problemError places a reference's problem at p.
func problemError(p *field.Path, problem *lookup.Problem) *field.Error {
	switch problem.Type {
	case lookup.NotFound:
		return &field.Error{Type: field.ErrorTypeNotFound, Field: p.String(), BadValue: problem.Value, Detail: problem.Message}
	case lookup.LookupFailed:
		return field.InternalError(p, problem)
	default:
		return field.Invalid(p, problem.Value, problem.Message)
	}
}

func (r *Result) add(o Result) {
	r.Errors = append(r.Errors, o.Errors...)
	r.Warnings = append(r.Warnings, o.Warnings...)
}
