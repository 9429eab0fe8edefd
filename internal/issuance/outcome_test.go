package issuance

import (
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
)

func TestInterpret(t *testing.T) {
	cond := func(typ cmapi.CertificateRequestConditionType, status cmmeta.ConditionStatus, reason, msg string) cmapi.CertificateRequestCondition {
		return cmapi.CertificateRequestCondition{Type: typ, Status: status, Reason: reason, Message: msg}
	}
	tests := map[string]struct {
		conditions  []cmapi.CertificateRequestCondition
		certificate []byte
		want        State
		wantMessage string
	}{
		"new":                  {want: Pending},
		"approved, not signed": {conditions: []cmapi.CertificateRequestCondition{cond("Approved", "True", "", ""), cond("Ready", "False", "Pending", "")}, want: Pending},
		"issued":               {conditions: []cmapi.CertificateRequestCondition{cond("Approved", "True", "", ""), cond("Ready", "True", "Issued", "")}, certificate: []byte("x"), want: Issued},
		"ready without a certificate is not issued": {conditions: []cmapi.CertificateRequestCondition{cond("Ready", "True", "Issued", "")}, want: Pending},
		"denied":                 {conditions: []cmapi.CertificateRequestCondition{cond("Denied", "True", "Policy", "no such SAN")}, want: Denied, wantMessage: "no such SAN"},
		"denied wins over ready": {conditions: []cmapi.CertificateRequestCondition{cond("Ready", "False", "Denied", ""), cond("Denied", "True", "Policy", "no")}, want: Denied, wantMessage: "no"},
		"invalid":                {conditions: []cmapi.CertificateRequestCondition{cond("InvalidRequest", "True", "Bad", "bad CSR")}, want: InvalidRequest, wantMessage: "bad CSR"},
		"failed":                 {conditions: []cmapi.CertificateRequestCondition{cond("Ready", "False", "Failed", "signer down")}, want: Failed, wantMessage: "signer down"},
		// The reason alone is not enough: only Ready=False with reason Failed is a failure.
		"reason Failed while Ready is True":    {conditions: []cmapi.CertificateRequestCondition{cond("Ready", "True", "Failed", "")}, certificate: []byte("x"), want: Issued},
		"reason Failed while Ready is Unknown": {conditions: []cmapi.CertificateRequestCondition{cond("Ready", "Unknown", "Failed", "")}, want: Pending},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cr := &cmapi.CertificateRequest{Status: cmapi.CertificateRequestStatus{Conditions: tc.conditions, Certificate: tc.certificate}}
			got, msg := Interpret(cr)
			if got != tc.want || msg != tc.wantMessage {
				t.Errorf("Interpret = %s %q, want %s %q", got, msg, tc.want, tc.wantMessage)
			}
		})
	}
}
