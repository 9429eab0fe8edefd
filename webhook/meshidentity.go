package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/validation"
)

// MeshIdentityGroupKind names MeshIdentities in errors.
var MeshIdentityGroupKind = schema.GroupKind{Group: "kuma.io", Kind: "MeshIdentity"}

// decodeMeshIdentity reads the MeshIdentity under admission. Its schema is
// structural, so the API server has checked the types of every field but
// the extension's config; an error means the request itself is broken.
func decodeMeshIdentity(req admission.Request) (*kuma.MeshIdentityResource, error) {
	if len(req.Object.Raw) == 0 {
		return nil, errNoObject
	}
	var mid kuma.MeshIdentityResource
	if err := json.Unmarshal(req.Object.Raw, &mid); err != nil {
		return nil, fmt.Errorf("the object is not a MeshIdentity: %w", err)
	}
	if mid.Namespace == "" {
		mid.Namespace = req.Namespace
	}
	return &mid, nil
}

// MeshIdentityDefaulter defaults the issuer of a MeshIdentity that meshcert
// serves, with a JSON patch that touches nothing else. Every other
// MeshIdentity passes through with no patch.
type MeshIdentityDefaulter struct{}

var _ admission.Handler = MeshIdentityDefaulter{}

// Handle implements admission.Handler.
func (MeshIdentityDefaulter) Handle(ctx context.Context, req admission.Request) admission.Response {
	if done, resp := checkOperation(req); done {
		return resp
	}
	mid, err := decodeMeshIdentity(req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	changes := defaults.MeshIdentity(mid)
	if len(changes) > 0 {
		logf.FromContext(ctx).V(1).Info("Defaulted MeshIdentity", "namespace", mid.Namespace, "name", mid.Name, "fields", len(changes))
	}
	return patched(changes)
}

// MeshIdentityValidator rejects a broken MeshIdentity that meshcert serves
// with every problem at once.
type MeshIdentityValidator struct {
	SystemNamespace string
	// LocalZone is the zone of a trust domain without a kuma.io/zone label.
	LocalZone string
	Lookup    lookup.Lookup
	Now       func() time.Time
}

var _ admission.Handler = &MeshIdentityValidator{}

// Handle implements admission.Handler.
func (v *MeshIdentityValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if done, resp := checkOperation(req); done {
		return resp
	}
	mid, err := decodeMeshIdentity(req)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	res := validation.ValidateMeshIdentity(mid, validation.Env{
		Env:       lookup.Env{SystemNamespace: v.SystemNamespace, Now: v.Now(), Lookup: v.Lookup},
		LocalZone: v.LocalZone,
	})
	log := logf.FromContext(ctx).V(1)
	if len(res.Errors) == 0 {
		log.Info("Admitted MeshIdentity", "namespace", mid.Namespace, "name", mid.Name, "warnings", len(res.Warnings))
		return admission.Allowed("").WithWarnings(res.Warnings...)
	}
	log.Info("Rejected MeshIdentity", "namespace", mid.Namespace, "name", mid.Name, "errors", len(res.Errors))
	return invalid(MeshIdentityGroupKind, mid.Name, res.Errors, res.Warnings)
}
