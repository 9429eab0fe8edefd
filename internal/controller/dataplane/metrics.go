package dataplane

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	issuedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshcert_certificates_issued_total",
		Help: "Dataplane certificates issued and delivered, by mesh and backend.",
	}, []string{"mesh", "backend"})
	failuresTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshcert_issuance_failures_total",
		Help: "Failed issuance attempts, by reason (Denied, Failed, InvalidRequest, Timeout, MissingCA, ...).",
	}, []string{"reason"})
)

func init() {
	metrics.Registry.MustRegister(issuedTotal, failuresTotal)
}
