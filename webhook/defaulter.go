package webhook

import (
	"context"
	"net/http"

	"gomodules.xyz/jsonpatch/v2"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/defaults"
)

// Defaulter answers the mutating webhook with a JSON patch that adds only the
// missing defaults, so fields meshcert does not model are never rewritten.
type Defaulter struct{}

var _ admission.Handler = Defaulter{}

// Handle implements admission.Handler.
func (Defaulter) Handle(ctx context.Context, req admission.Request) admission.Response {
	if done, resp := checkOperation(req); done {
		return resp
	}
	mesh, fieldErrs, err := decodeMesh(req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if len(fieldErrs) > 0 {
		// Defaulting around a type error could turn a wrong value into a valid
		// one; leave the object alone and let validation report it.
		return admission.Allowed("")
	}
	changes := defaults.Mesh(mesh.Spec)
	if len(changes) > 0 {
		logf.FromContext(ctx).V(1).Info("Defaulted mesh", "mesh", mesh.Name, "fields", len(changes))
	}
	return patched(changes)
}

// patched allows an object with one JSON patch operation per default, or
// as it is when it has none.
func patched(changes []defaults.Change) admission.Response {
	if len(changes) == 0 {
		return admission.Allowed("")
	}
	ops := make([]jsonpatch.JsonPatchOperation, 0, len(changes))
	for _, c := range changes {
		ops = append(ops, jsonpatch.NewOperation("add", c.Pointer(), c.Value))
	}
	return admission.Patched("", ops...)
}
