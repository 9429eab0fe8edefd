package webhook

import (
	"fmt"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// TestManyErrorsAreCapped: a Mesh with thousands of errors is answered
// quickly, with the first hundred and a count of the rest.
func TestManyErrorsAreCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"mtls":{"backends":[`)
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"name":"cm-%d","type":"certmanager","conf":{"issuerRef":{"kind":"Certificate"}}}`, i)
	}
	b.WriteString(`]}}`)
	_, resp := serve(t, testValidator(), "application/json", review(admissionv1.Create, mesh(b.String())))
	causes := resp.Result.Details.Causes
	if len(causes) != 101 || causes[100].Message != "Invalid value: and 9900 more errors" {
		t.Errorf("%d causes, last %+v; want 100 and a count of the other 9900", len(causes), causes[len(causes)-1])
	}
}
