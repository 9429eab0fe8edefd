package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/internal/kuma"
)

var (
	errNoObject  = errors.New("the AdmissionReview request has no object")
	errNotObject = errors.New("the object is not a JSON object")
)

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

// decodeMesh reads the Mesh under admission, its spec as the reconciler
// reads a stored one (kuma.MeshSpecFrom, which names every value of the
// wrong type). An error means the request itself is broken (and deserves a
// 400); field errors mean the spec is, and are the user's to fix.
func decodeMesh(req admission.Request) (kuma.Mesh, field.ErrorList, error) {
	if len(req.Object.Raw) == 0 {
		return kuma.Mesh{}, nil, errNoObject
	}
	// A map, not a struct: encoding/json matches struct fields regardless of
	// case, and "Spec" is not the spec.
	var obj map[string]any
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		return kuma.Mesh{}, nil, fmt.Errorf("%w: %v", errNotObject, err)
	}
	if obj == nil {
		return kuma.Mesh{}, nil, errNotObject
	}
	mesh := kuma.Mesh{Name: req.Name}
	meta, _ := obj["metadata"].(map[string]any)
	if mesh.Name == "" {
		mesh.Name, _ = meta["name"].(string) // only for messages
	}
	annotations, _ := meta["annotations"].(map[string]any)
	if alg, ok := annotations[kuma.KeyAlgorithmAnnotation].(string); ok {
		mesh.KeyAlgorithm = &alg
	}
	spec, errs := kuma.MeshSpecFrom(obj["spec"])
	mesh.Spec = spec
	return mesh, errs, nil
}
