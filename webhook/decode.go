package webhook

import (
	"errors"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/internal/kuma"
)

var errNoObject = errors.New("the AdmissionReview request has no object")

// checkOperation answers the requests there is nothing to check in: DELETE
// and CONNECT are allowed, and a request with no known operation is broken.
func checkOperation(req admission.Request) (bool, admission.Response) {
	switch req.Operation {
	case admissionv1.Create, admissionv1.Update:
		return false, admission.Response{}
	case admissionv1.Delete, admissionv1.Connect:
		return true, admission.Allowed("")
	default:
		return true, admission.Errored(http.StatusBadRequest, fmt.Errorf("the AdmissionReview request has no known operation (got %q)", req.Operation))
	}
}

// decodeOldMesh reads the Mesh as it was before an update.
func decodeOldMesh(req admission.Request) (kuma.Mesh, error) {
	old := req
	old.Object = req.OldObject
	mesh, errs, err := decodeMesh(old)
	if err == nil && len(errs) > 0 {
		err = errs.ToAggregate()
	}
	return mesh, err
}

// decodeMesh reads the Mesh under admission. An error means the request itself
// is broken (and deserves a 400); field errors mean the spec is, and are the
// user's to fix.
func decodeMesh(req admission.Request) (kuma.Mesh, field.ErrorList, error) {
	if len(req.Object.Raw) == 0 {
		return kuma.Mesh{}, nil, errNoObject
	}
	mesh, errs, err := kuma.DecodeMesh(req.Object.Raw, req.Name)
	if err != nil {
		return kuma.Mesh{}, nil, err
	}
	return mesh, errs, nil
}
