package lookup

import (
	"fmt"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/defaults"
)

// IssuerProblem says why the cert-manager issuer a defaulted issuerRef names
// cannot sign yet: it is missing, or not Ready. It is nil when the issuer is
// Ready, and for an external issuer's group, which meshcert cannot see.
// The state is returned when the issuer was found.
func IssuerProblem(ref cmmeta.IssuerReference, env Env) (*IssuerState, *Problem) {
	if ref.Group != defaults.IssuerGroup {
		return nil, nil
	}
	var what string
	switch ref.Kind {
	case cmapi.IssuerKind:
		what = fmt.Sprintf("Issuer %s/%s", env.SystemNamespace, ref.Name)
	case cmapi.ClusterIssuerKind:
		what = fmt.Sprintf("ClusterIssuer %s", ref.Name)
	default:
		return nil, nil
	}
	state, err := env.Lookup.Issuer(ref)
	switch {
	case err != nil:
		return nil, &Problem{Type: LookupFailed, Value: ref.Name, Message: fmt.Sprintf("could not look up %s: %v", what, err)}
	case state == nil && ref.Kind == cmapi.IssuerKind:
		return nil, &Problem{Type: NotFound, Value: ref.Name, Message: fmt.Sprintf("%s not found: an Issuer must be in the system namespace %q (or use a ClusterIssuer)", what, env.SystemNamespace)}
	case state == nil:
		return nil, &Problem{Type: NotFound, Value: ref.Name, Message: fmt.Sprintf("%s not found", what)}
	case !state.Ready:
		detail := strings.TrimSpace(state.Reason + " " + state.Message)
		if detail == "" {
			detail = "no Ready condition yet"
		}
		return state, &Problem{Type: Invalid, Value: ref.Name, Message: fmt.Sprintf("%s is not Ready (%s)", what, detail)}
	}
	return state, nil
}
