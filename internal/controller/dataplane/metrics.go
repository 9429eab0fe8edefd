package dataplane

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/meshcert/meshcert/internal/trust"
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
	// One series per Mesh with a certmanager backend: they are few.
	meshRootExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshcert_mesh_root_expiration_timestamp_seconds",
		Help: "When the earliest of the roots a Mesh's dataplanes trust (the CAs of its certmanager backends, enabled or not) expires, in seconds since the epoch, by mesh.",
	}, []string{"mesh"})
)

func init() {
	metrics.Registry.MustRegister(issuedTotal, failuresTotal, meshRootExpiry)
}

// reportMeshRoots records when the earliest of a mesh's roots expires, and
// forgets the mesh when it has none.
func reportMeshRoots(mesh string, roots []*x509.Certificate) {
	if len(roots) == 0 {
		meshRootExpiry.DeleteLabelValues(mesh)
		return
	}
	meshRootExpiry.WithLabelValues(mesh).Set(float64(trust.EarliestExpiry(roots).Unix()))
}
