package webhook

import (
	"context"
	"fmt"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/validation"
)

// MeshGroupKind names Meshes in errors: kubectl prints `Mesh.kuma.io "x" is invalid`.
var MeshGroupKind = schema.GroupKind{Group: "kuma.io", Kind: "Mesh"}

// Validator answers the validating webhook. It reports every problem at once,
// as an Invalid status with one cause per field.
type Validator struct {
	SystemNamespace string
	// Lookup reads referenced objects from the informers' index; it must
	// never call the API server.
	Lookup lookup.Lookup
	// Now is the clock for certificate validity checks.
	Now func() time.Time
	// AllowUnsafeCASwitch lets an update enable the backend it adds.
	AllowUnsafeCASwitch bool
}

var _ admission.Handler = &Validator{}

// Handle implements admission.Handler.
func (v *Validator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if done, resp := checkOperation(req); done {
		return resp
	}
	mesh, errs, err := decodeMesh(req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	// A value of the wrong type is reported with every rule that does not
	// depend on it: validation skips only the backends that did not parse.
	env := validation.Env{
		Env:                 lookup.Env{SystemNamespace: v.SystemNamespace, Now: v.Now(), Lookup: v.Lookup},
		AllowUnsafeCASwitch: v.AllowUnsafeCASwitch,
	}
	res := validate(req, mesh, env)
	errs = append(errs, res.Errors...)
	log := logf.FromContext(ctx).V(1)
	if len(errs) == 0 {
		log.Info("Admitted mesh", "mesh", mesh.Name, "operation", req.Operation, "warnings", len(res.Warnings))
		return admission.Allowed("").WithWarnings(res.Warnings...)
	}
	log.Info("Rejected mesh", "mesh", mesh.Name, "operation", req.Operation, "errors", len(errs), "warnings", len(res.Warnings))
	return invalid(MeshGroupKind, mesh.Name, errs, res.Warnings)
}

// invalid rejects an object with an Invalid status, one cause per field, as
// kubectl prints them.
func invalid(gk schema.GroupKind, name string, errs field.ErrorList, warnings []string) admission.Response {
	status := apierrors.NewInvalid(gk, name, limitErrors(errs)).Status()
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{
		Allowed:  false,
		Result:   &status,
		Warnings: warnings,
	}}
}

// validate runs the rules once: those of an update when there is an old Mesh
// to guard, else those of any Mesh.
func validate(req admission.Request, mesh kuma.Mesh, env validation.Env) validation.Result {
	if req.Operation == admissionv1.Update {
		// An old object that no longer parses cannot guard anything.
		if old, err := decodeOldMesh(req); err == nil {
			return validation.ValidateMeshUpdate(old, mesh, env)
		}
	}
	return validation.ValidateMesh(mesh, env)
}

// maxErrors bounds the causes of a rejection. Building an Invalid status
// costs time quadratic in their number, and a person reads the first ones.
const maxErrors = 100

// limitErrors keeps the first maxErrors errors and counts the rest.
func limitErrors(errs field.ErrorList) field.ErrorList {
	if len(errs) <= maxErrors {
		return errs
	}
	more := &field.Error{Type: field.ErrorTypeInvalid, Field: kuma.SpecPath.String(), BadValue: field.OmitValueType{},
		Detail: fmt.Sprintf("and %d more errors", len(errs)-maxErrors)}
	return append(errs[:maxErrors:maxErrors], more)
}
