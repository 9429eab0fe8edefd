package issuance

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	issuanceSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "meshcert_issuance_duration_seconds",
		Help:    "Time from creating a CertificateRequest to delivering its certificate.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10ms to ~80s
	})
	inFlightGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshcert_certificate_requests_in_flight",
		Help: "CertificateRequests created and not yet finished.",
	})
)

func init() {
	metrics.Registry.MustRegister(issuanceSeconds, inFlightGauge)
}
