package validation

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/meshcert/meshcert/internal/kuma"
)

// ValidateMeshIdentity validates a MeshIdentity that meshcert serves or
// guards, with the rules of a Mesh's certmanager backend at the identity's
// own paths, and Kuma's rules for where an identity lives and how its SPIFFE
// ID is made. Any other MeshIdentity is not meshcert's to judge.
func ValidateMeshIdentity(mid *kuma.MeshIdentityResource, env Env) Result {
	var res Result
	served := mid.ServedBy()
	if served == kuma.NotServed {
		return res
	}
	if mid.Namespace != env.SystemNamespace {
		// Kuma's words (v2.14.3, its admission webhook).
		res.Errors = append(res.Errors, field.Invalid(kuma.MetadataPath.Child("namespace"), mid.Namespace,
			fmt.Sprintf("resource type MeshIdentity can be created only in the system namespace:%s", env.SystemNamespace)))
	}
	mesh := mid.MeshName()
	res.add(validateSpiffeID(mid, mesh, env))
	if env.Lookup != nil {
		res.add(warnMeshServices(mesh, env))
	}

	conf, errs := mid.CertManagerConf()
	res.Errors = append(res.Errors, errs...)
	switch served {
	case kuma.ServedByExtension:
		if len(errs) > 0 {
			return res // The config did not parse: its type errors say what to fix.
		}
		res.add(validateCertManagerConf(mesh, conf, kuma.ExtensionConfigPath, env))
	case kuma.ServedByAgent:
		if spire := mid.Spec.Provider.Spire; len(spire) == 0 || string(spire) == "null" {
			// Kuma's words (v2.14.3, pkg/core/resources/apis/meshidentity/api/v1alpha1/validator.go).
			res.Errors = append(res.Errors, field.Required(kuma.ProviderPath.Child("spire"), "configuration needs to be defined"))
		}
		at := func(key string) *field.Path { return kuma.AnnotationsPath.Key(key) }
		refErrs := validateIssuerRef(conf.IssuerRef, at(kuma.IssuerNameAnnotation), at(kuma.IssuerKindAnnotation), at(kuma.IssuerGroupAnnotation))
		if _, named := mid.Annotations[kuma.IssuerNameAnnotation]; !named && len(refErrs) > 0 {
			refErrs[0].Detail = fmt.Sprintf("once any meshcert.io/issuer-* annotation is set: %s", refErrs[0].Detail)
		}
		res.Errors = append(res.Errors, refErrs...)
		if env.Lookup != nil && len(refErrs) == 0 {
			checkIssuer(conf.IssuerRef, at(kuma.IssuerNameAnnotation), env, &res)
		}
		if ds := conf.CACert; ds != nil {
			p := at(kuma.CACertSecretAnnotation)
			if dsErrs := validateSecretName(*ds.Secret, p); len(dsErrs) > 0 {
				res.Errors = append(res.Errors, dsErrs...)
			} else if env.Lookup != nil {
				res.add(validateCAMaterial(mesh, *ds, p, env))
			}
		}
	}
	if alg, ok := mid.Annotations[kuma.KeyAlgorithmAnnotation]; ok {
		res.Errors = append(res.Errors, validateKeyAlgorithm(alg)...)
	}
	if v, ok := mid.Annotations[kuma.DurationAnnotation]; ok {
		if _, err := kuma.ParseLifetime(v); err != nil {
			res.Errors = append(res.Errors, field.Invalid(kuma.AnnotationsPath.Key(kuma.DurationAnnotation), v, err.Error()))
		}
	}
	if v, ok := mid.Annotations[kuma.MeshTrustAnnotation]; ok && v != "Enabled" && v != "Disabled" {
		res.Errors = append(res.Errors, field.NotSupported(kuma.AnnotationsPath.Key(kuma.MeshTrustAnnotation), v, []string{"Enabled", "Disabled"}))
	}
	return res
}

// validateSpiffeID checks that the identity's templates parse, as Kuma's
// validator does, and render a valid SPIFFE ID with Kuma's variables: the
// trust domain for this identity, and the path for a sample workload. Each
// template is checked on its own.
func validateSpiffeID(mid *kuma.MeshIdentityResource, mesh string, env Env) Result {
	var res Result
	tdPath, pathPath := kuma.SpiffeIDPath.Child("trustDomain"), kuma.SpiffeIDPath.Child("path")
	tdTmpl, pathTmpl := mid.Spec.SpiffeID.TrustDomainTemplate(), mid.Spec.SpiffeID.PathTemplate()

	// A sample trust domain stands in for one that does not render.
	td := "example.org"
	if err := kuma.ParseTemplate(tdTmpl); err != nil {
		res.Errors = append(res.Errors, field.Invalid(tdPath, tdTmpl, "couldn't parse template: "+err.Error()))
	} else if rendered, err := kuma.RenderTrustDomain(tdTmpl, mesh, env.LocalZone, kuma.LabelView(mid)); err != nil {
		res.Errors = append(res.Errors, field.Invalid(tdPath, tdTmpl, fmt.Sprintf("does not give a valid trust domain for mesh %q: %v", mesh, err)))
	} else {
		td = rendered
	}
	if err := kuma.ParseTemplate(pathTmpl); err != nil {
		res.Errors = append(res.Errors, field.Invalid(pathPath, pathTmpl, "couldn't parse template: "+err.Error()))
	} else if _, err := kuma.SampleSpiffeID(td, pathTmpl); err != nil {
		res.Errors = append(res.Errors, field.Invalid(pathPath, pathTmpl, fmt.Sprintf("does not give a valid SPIFFE ID for a workload: %v", err)))
	}
	return res
}

// warnMeshServices warns when the identity's Mesh does not run MeshServices in
// Exclusive mode: Kuma 2.14 then never marks a MeshIdentity Ready (its
// DependenciesReady condition says MeshServicesDisabled, v2.14.3
// pkg/core/resources/apis/meshidentity/status/updater.go), and no workload
// gets it. Kuma's later versions drop the check, so it is a warning.
func warnMeshServices(mesh string, env Env) Result {
	var res Result
	p := kuma.MetadataPath.Child("labels").Key(kuma.MeshLabel)
	mode, found, err := env.Lookup.MeshServicesMode(mesh)
	switch {
	case err != nil:
		res.warn(p, "could not look up Mesh %s: %v", mesh, err)
	case found && mode != kuma.MeshServicesExclusive:
		res.warn(p, "Mesh %s has spec.meshServices.mode %q, not %q: Kuma 2.14 never marks this MeshIdentity Ready (reason MeshServicesDisabled), so no workload gets its identity", mesh, mode, kuma.MeshServicesExclusive)
	}
	return res
}
