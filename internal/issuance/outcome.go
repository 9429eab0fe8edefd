package issuance

import (
	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
)

// State is where a CertificateRequest stands.
type State string

// The states of a CertificateRequest. All but Pending are final.
const (
	Pending State = "Pending"
	// Issued: Ready, with a certificate.
	Issued State = "Issued"
	// Denied: an approver denied it.
	Denied State = "Denied"
	// Failed: the issuer tried and failed (Ready=False, reason Failed).
	Failed State = "Failed"
	// InvalidRequest: an external issuer found the request invalid.
	InvalidRequest State = "InvalidRequest"
)

// Interpret reads a CertificateRequest's conditions, the one way every caller
// does, and returns its state with cert-manager's message for a final one.
func Interpret(cr *cmapi.CertificateRequest) (State, string) {
	ready := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionReady)
	switch {
	case apiutil.CertificateRequestIsDenied(cr):
		return Denied, apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionDenied).Message
	case apiutil.CertificateRequestHasInvalidRequest(cr):
		return InvalidRequest, apiutil.CertificateRequestInvalidRequestMessage(cr)
	case ready == nil:
		return Pending, ""
	case ready.Status == cmmeta.ConditionFalse && ready.Reason == cmapi.CertificateRequestReasonFailed:
		return Failed, ready.Message
	case ready.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
		return Issued, ""
	default:
		return Pending, ""
	}
}
