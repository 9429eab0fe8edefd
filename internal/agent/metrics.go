package agent

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// The agent's metrics. An identity's series live while the agent holds its
// certificate, so their number is bounded by the identities of one node.
var (
	svidExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshcert_agent_svid_expiration_timestamp_seconds",
		Help: "When the certificate the agent serves for an identity expires, in seconds since the epoch, by mesh and SPIFFE ID.",
	}, []string{"mesh", "spiffe_id"})
	svidIssuances = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshcert_agent_svid_issuances_total",
		Help: "Finished issuances of identities' certificates, by kind (first or renewal) and result (success or failure).",
	}, []string{"kind", "result"})
	callersRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshcert_agent_callers_refused_total",
		Help: "Calls and connections the agent refused, by reason: " + strings.Join(refusalReasons, ", ") + ".",
	}, []string{"reason"})
)

// The kinds and results of an issuance.
const (
	issuanceFirst   = "first"
	issuanceRenewal = "renewal"
	resultSuccess   = "success"
	resultFailure   = "failure"
)

// The reasons a caller is refused: a fixed set, never the free text of why,
// which names pods and processes.
const (
	refusedNotEntitled       = "not_entitled"         // the caller has no identity
	refusedNoLongerEntitled  = "no_longer_entitled"   // its identity changed under a stream
	refusedNotAttested       = "not_attested"         // the agent could not tell who it is
	refusedNameNotAuthorized = "name_not_authorized"  // an SDS request named another identity's secret
	refusedTooManyNames      = "too_many_names"       // an SDS request over MaxResourceNames
	refusedTooManyCalls      = "too_many_calls"       // over MaxCallsPerCaller
	refusedTooManyConns      = "too_many_connections" // over MaxConnections or MaxConnectionsPerCaller
)

var refusalReasons = []string{refusedNotEntitled, refusedNoLongerEntitled, refusedNotAttested, refusedNameNotAuthorized,
	refusedTooManyNames, refusedTooManyCalls, refusedTooManyConns}

func init() {
	metrics.Registry.MustRegister(svidExpiry, svidIssuances, callersRefused)
	// Every series of a fixed label set starts at zero, so that rate() sees
	// the first failure and a dashboard shows none rather than no data.
	for _, kind := range []string{issuanceFirst, issuanceRenewal} {
		for _, result := range []string{resultSuccess, resultFailure} {
			svidIssuances.WithLabelValues(kind, result)
		}
	}
	for _, reason := range refusalReasons {
		callersRefused.WithLabelValues(reason)
	}
}

func refused(reason string) { callersRefused.WithLabelValues(reason).Inc() }

// issuanceKind is first for an identity without a certificate, renewal
// otherwise.
func issuanceKind(current *SVID) string {
	if current == nil {
		return issuanceFirst
	}
	return issuanceRenewal
}

// servedExpiry records when an identity's served certificate expires; its
// series leaves with the identity.
func servedExpiry(mesh, spiffeID string, notAfter time.Time) {
	svidExpiry.DeletePartialMatch(prometheus.Labels{"spiffe_id": spiffeID})
	svidExpiry.WithLabelValues(mesh, spiffeID).Set(float64(notAfter.Unix()))
}

func dropExpiry(spiffeID string) {
	svidExpiry.DeletePartialMatch(prometheus.Labels{"spiffe_id": spiffeID})
}
