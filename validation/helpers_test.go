package validation

import (
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/meshcert/meshcert/internal/lookup"
)

// now is the fixed clock of these tests.
var now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// fakeLookup serves Secrets and issuers from maps.
type fakeLookup struct {
	secrets map[string]*corev1.Secret
	issuers map[cmmeta.IssuerReference]lookup.IssuerState
	// issued counts certificates by "mesh/backend".
	issued map[string]int
	// meshServices is each Mesh's spec.meshServices.mode.
	meshServices map[string]string
	err          error
}

func (f fakeLookup) MeshServicesMode(mesh string) (string, bool, error) {
	mode, ok := f.meshServices[mesh]
	return mode, ok, f.err
}

func (f fakeLookup) IssuedBy(mesh, backend string) (int, error) {
	return f.issued[mesh+"/"+backend], f.err
}

func (f fakeLookup) SystemSecret(name string) (*corev1.Secret, error) {
	return f.secrets[name], f.err
}

func (f fakeLookup) Issuer(ref cmmeta.IssuerReference) (*lookup.IssuerState, error) {
	if s, ok := f.issuers[ref]; ok {
		return &s, f.err
	}
	return nil, f.err
}

func errorStrings(errs field.ErrorList) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}
