// Package check inspects a cluster as `meshcert check` does and says what is
// wrong with meshcert there and how to fix it: each check has a name, a
// status (pass, warn or fail), the reason for it and, unless it passed, a
// hint. It reads the cluster live through the API server, with the user's
// credentials, and changes nothing: the one write, the admission check of the
// webhooks, is a dry run.
package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Status is a check's outcome.
type Status string

// The outcomes of a check. A warning does not fail `meshcert check`, as
// linkerd check's warnings do not: it is something to look at before it
// becomes a failure, such as a root that expires within WarnWithin.
const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
)

// How long a root or an issuer's certificate must stay valid: under
// WarnWithin is a warning (linkerd check's "valid for at least 60 days"),
// under FailWithin a failure, since a renewal that late leaves no time to
// roll the new root out.
const (
	WarnWithin = 60 * 24 * time.Hour
	FailWithin = 7 * 24 * time.Hour
)

// Result is one check: its group (what it is about, such as the install or
// a MeshIdentity), its name, its status, why, and how to fix it.
type Result struct {
	Group  string `json:"group"`
	Name   string `json:"name"`
	Status Status `json:"status"`
	Reason string `json:"reason"`
	Hint   string `json:"hint,omitempty"`
}

// Report is every check of one run.
type Report struct {
	Results []Result `json:"checks"`
}

// Failed tells whether a check failed; warnings do not count.
func (r *Report) Failed() bool {
	for _, res := range r.Results {
		if res.Status == Fail {
			return true
		}
	}
	return false
}

// Checker runs the checks against one cluster.
type Checker struct {
	// Client reads the cluster live.
	Client client.Client
	// Namespace is meshcert's release namespace, where its Deployment, its
	// webhook's Service and its agents run.
	Namespace string
	// SystemNamespace is the mesh's system namespace: MeshIdentities,
	// MeshTrusts, Issuers, mesh Secrets and CertificateRequests.
	SystemNamespace string
	// ClusterResourceNamespace is where cert-manager reads the Secrets of
	// ClusterIssuers.
	ClusterResourceNamespace string
	// Zone renders .Zone in a trust domain, as the agent's --zone.
	Zone string
	// Mesh, when set, limits the identities and backends checked to that
	// mesh's.
	Mesh  string
	Clock clock.PassiveClock
}

// group collects the results of one group of checks.
type group struct {
	report *Report
	name   string
}

func (g group) add(name string, status Status, hint, format string, args ...any) {
	if status == Pass {
		hint = ""
	}
	g.report.Results = append(g.report.Results, Result{Group: g.name, Name: name, Status: status, Reason: fmt.Sprintf(format, args...), Hint: hint})
}

func (g group) pass(name, format string, args ...any) { g.add(name, Pass, "", format, args...) }

// validity judges how long a certificate stays valid: a failure under
// FailWithin, a warning under WarnWithin.
func validity(notAfter, now time.Time) Status {
	switch left := notAfter.Sub(now); {
	case left < FailWithin:
		return Fail
	case left < WarnWithin:
		return Warn
	}
	return Pass
}

// until says when a certificate expires, and in how long.
func until(notAfter, now time.Time) string {
	left := notAfter.Sub(now)
	when := notAfter.UTC().Format(time.RFC3339)
	switch {
	case left < 0:
		return "expired at " + when
	case left < 48*time.Hour:
		return fmt.Sprintf("expires %s, in %d hours", when, int(left.Hours()))
	}
	return fmt.Sprintf("expires %s, in %d days", when, int(left.Hours()/24))
}

// Output formats of a report.
const (
	OutputText = "text"
	OutputJSON = "json"
)

// Write prints the report as text, one line per check grouped as run, or as
// JSON for scripts.
func (r *Report) Write(w io.Writer, format string) error {
	if format == OutputJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	var b strings.Builder
	last := ""
	counts := map[Status]int{}
	for _, res := range r.Results {
		if res.Group != last {
			if last != "" {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "%s\n", res.Group)
			last = res.Group
		}
		counts[res.Status]++
		fmt.Fprintf(&b, "  [%s] %s: %s\n", res.Status, res.Name, res.Reason)
		if res.Hint != "" {
			fmt.Fprintf(&b, "         fix: %s\n", res.Hint)
		}
	}
	verdict := "OK"
	if r.Failed() {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "\n%s: %d passed, %d warnings, %d failed\n", verdict, counts[Pass], counts[Warn], counts[Fail])
	_, err := io.WriteString(w, b.String())
	return err
}
