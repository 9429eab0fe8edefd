package meshidentity

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

func TestMetrics(t *testing.T) {
	ca := testpki.NewCA(t, "ca", now)
	fromSecret := map[string]string{kuma.CACertSecretAnnotation: "ca-cert"}
	notReady := controllertest.ReadyIssuer("local-ca")
	notReady.Status.Conditions[0].Status = "False"
	rootOf := func(notAfter time.Time) string {
		return fmt.Sprintf(`meshcert_trust_root_expiration_timestamp_seconds{mesh="demo",mesh_identity="agent"} %d`, notAfter.Unix())
	}
	const ready = `meshcert_issuer_ready{issuer_kind="Issuer",issuer_name="local-ca",mesh="demo",mesh_identity="agent"} 1`
	tests := map[string]struct {
		objects []client.Object
		before  func(h *harness)
		// want are the series afterwards.
		want []string
	}{
		"the caCert's root and a Ready issuer": {
			objects: []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca)},
			want:    []string{ready, rootOf(ca.Cert.NotAfter)},
		},
		"the root a probe learned": {
			objects: []client.Object{identity(nil), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile()
				h.Respond(controllertest.SignedBy(ca, time.Hour))
			},
			want: []string{ready, rootOf(ca.Cert.NotAfter)},
		},
		"an issuer not Ready, whose root is not known yet": {
			objects: []client.Object{identity(nil), notReady},
			want:    []string{`meshcert_issuer_ready{issuer_kind="Issuer",issuer_name="local-ca",mesh="demo",mesh_identity="agent"} 0`},
		},
		"a missing ClusterIssuer": {
			objects: []client.Object{identity(map[string]string{kuma.IssuerKindAnnotation: cmapi.ClusterIssuerKind})},
			want:    []string{`meshcert_issuer_ready{issuer_kind="ClusterIssuer",issuer_name="local-ca",mesh="demo",mesh_identity="agent"} 0`},
		},
		"an external issuer's readiness is not guessed": {
			objects: []client.Object{identity(map[string]string{kuma.IssuerGroupAnnotation: "awspca.cert-manager.io", kuma.IssuerKindAnnotation: "AWSPCAClusterIssuer",
				kuma.CACertSecretAnnotation: "ca-cert"}), caSecret(ca)},
			want: []string{rootOf(ca.Cert.NotAfter)},
		},
		"a deleted identity's series leave": {
			before: func(*harness) {
				setIssuerReady("demo", "agent", "Issuer", "local-ca", true)
				reportRoots("demo", "agent", []*x509.Certificate{ca.Cert})
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rootExpiry.Reset()
			issuerReady.Reset()
			h := newHarness(t, tc.objects...)
			if tc.before != nil {
				tc.before(h)
			}
			h.reconcile()
			if err := testutil.CollectAndCompare(rootExpiry, strings.NewReader(exposition(rootHeader, tc.want))); err != nil {
				t.Error(err)
			}
			if err := testutil.CollectAndCompare(issuerReady, strings.NewReader(exposition(readyHeader, tc.want))); err != nil {
				t.Error(err)
			}
		})
	}
}

const (
	rootHeader = `# HELP meshcert_trust_root_expiration_timestamp_seconds When the earliest of the roots a MeshIdentity's issuer signs with expires, in seconds since the epoch, by mesh and MeshIdentity.
# TYPE meshcert_trust_root_expiration_timestamp_seconds gauge
`
	readyHeader = `# HELP meshcert_issuer_ready Whether the cert-manager Issuer or ClusterIssuer of a MeshIdentity is Ready (1) or missing or not Ready (0); none for an external issuer, whose readiness meshcert cannot see.
# TYPE meshcert_issuer_ready gauge
`
)

// exposition is the text format of the series of the family header
// introduces, or nothing when there are none.
func exposition(header string, series []string) string {
	name := strings.Fields(header)[2]
	var out []string
	for _, s := range series {
		if strings.HasPrefix(s, name+"{") {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return header + strings.Join(out, "\n") + "\n"
}
