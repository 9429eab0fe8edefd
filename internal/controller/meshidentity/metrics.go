package meshidentity

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/meshcert/meshcert/internal/trust"
)

// One series per MeshIdentity meshcert keeps a MeshTrust for: they are few.
var (
	rootExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshcert_trust_root_expiration_timestamp_seconds",
		Help: "When the earliest of the roots a MeshIdentity's issuer signs with expires, in seconds since the epoch, by mesh and MeshIdentity.",
	}, []string{"mesh", "mesh_identity"})
	issuerReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshcert_issuer_ready",
		Help: "Whether the cert-manager Issuer or ClusterIssuer of a MeshIdentity is Ready (1) or missing or not Ready (0); none for an external issuer, whose readiness meshcert cannot see.",
	}, []string{"mesh", "mesh_identity", "issuer_kind", "issuer_name"})
)

func init() {
	metrics.Registry.MustRegister(rootExpiry, issuerReady)
}

// reportRoots records when the earliest of an identity's current roots
// expires.
func reportRoots(mesh, identity string, roots []*x509.Certificate) {
	rootExpiry.DeletePartialMatch(prometheus.Labels{"mesh_identity": identity})
	rootExpiry.WithLabelValues(mesh, identity).Set(float64(trust.EarliestExpiry(roots).Unix()))
}

// setIssuerReady records whether the identity's issuer is Ready.
func setIssuerReady(mesh, identity, kind, name string, ready bool) {
	issuerReady.DeletePartialMatch(prometheus.Labels{"mesh_identity": identity})
	v := 0.0
	if ready {
		v = 1
	}
	issuerReady.WithLabelValues(mesh, identity, kind, name).Set(v)
}

// forgetIssuer removes the identity's issuer series, for an issuer whose
// readiness meshcert cannot see.
func forgetIssuer(identity string) {
	issuerReady.DeletePartialMatch(prometheus.Labels{"mesh_identity": identity})
}

// forgetMetrics removes an identity's series once meshcert no longer keeps
// its MeshTrust.
func forgetMetrics(identity string) {
	rootExpiry.DeletePartialMatch(prometheus.Labels{"mesh_identity": identity})
	forgetIssuer(identity)
}
