package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
)

const systemNamespace = "kong-mesh-system"

// env is a test cluster with cert-manager's controllers and a CA Issuer and
// ClusterIssuer named mesh-ca.
type env struct {
	c       *localcluster.Cluster
	cm      *localcluster.CertManager
	ca      *testpki.CA
	stopped bool
}

// newEnv starts a cluster with the given cert-manager controllers.
func newEnv(ctx context.Context, cluster localcluster.Options, controllers ...string) (*env, error) {
	c, err := localcluster.Start(cluster)
	if err != nil {
		return nil, err
	}
	e := &env{c: c}
	if err := e.setup(ctx, controllers); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

func (e *env) setup(ctx context.Context, controllers []string) error {
	if err := e.c.InstallCRDs(); err != nil {
		return err
	}
	var err error
	if e.cm, err = e.c.StartCertManager(ctx, localcluster.CertManagerOptions{ClusterResourceNamespace: systemNamespace, Controllers: controllers}); err != nil {
		return err
	}
	if err := localcluster.EnsureNamespace(ctx, e.c.Client, systemNamespace); err != nil {
		return err
	}
	if e.ca, err = testpki.New("bench CA", time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour)); err != nil {
		return err
	}
	if err := localcluster.CreateCAIssuers(ctx, e.c.Client, []localcluster.CAIssuer{
		{Name: "mesh-ca", Namespace: systemNamespace, SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: e.ca},
		{Name: "mesh-ca", SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: e.ca},
	}); err != nil {
		return err
	}
	// The mesh Secret the documented example names as caCert.
	return e.c.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-ca", Namespace: systemNamespace, Labels: map[string]string{kuma.MeshLabel: "demo"}},
		Type:       kuma.MeshSecretType,
		Data:       map[string][]byte{kuma.SecretValueKey: e.ca.PEM},
	})
}

func (e *env) stop() {
	if e.stopped {
		return
	}
	e.stopped = true
	if e.cm != nil {
		e.cm.Stop()
	}
	_ = e.c.Stop()
}

// kumaDataplaneSpec is the spec of a Dataplane as Kuma's pod converter
// writes it for a sidecar of service svc in namespace ns: what meshcert's
// caches see in a real mesh, where a Dataplane holds more than its tags.
func kumaDataplaneSpec(ns, svc string, i int) []byte {
	ip := fmt.Sprintf("10.%d.%d.%d", 244+i>>16&0x7, i>>8&0xff, i&0xff)
	spec, _ := json.Marshal(map[string]any{
		"networking": map[string]any{
			"address": ip, "advertisedAddress": ip,
			"admin": map[string]any{"port": 9901},
			"inbound": []any{map[string]any{
				"port": 8080, "servicePort": 8080, "serviceAddress": ip,
				"health": map[string]any{"ready": true},
				"tags": map[string]string{
					"kuma.io/service": svc + "_" + ns + "_svc_8080", "kuma.io/protocol": "http", "kuma.io/zone": "default",
					"k8s.kuma.io/namespace": ns, "k8s.kuma.io/service-name": svc, "k8s.kuma.io/service-port": "8080",
					"app": svc, "pod-template-hash": "7d4b9c8f6d", "version": "v1",
				},
			}},
			"transparentProxying": map[string]any{
				"redirectPortInbound": 15006, "redirectPortOutbound": 15001, "ipFamilyMode": "DualStack",
			},
		},
		"probes": map[string]any{"port": 9000, "endpoints": []any{
			map[string]any{"inboundPort": 8080, "inboundPath": "/ready", "path": "/8080/ready"},
			map[string]any{"inboundPort": 8080, "inboundPath": "/live", "path": "/8080/live"},
		}},
	})
	return spec
}

// testdata reads a file under test/testdata.
func testdata(name string) ([]byte, error) {
	_, file, _, _ := runtime.Caller(0)
	return os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "test", "testdata", name))
}

// reviewMeshes are the example Meshes of the admission benchmark: as in a
// real cluster, most are valid (one looks up a mesh Secret and checks its CA,
// others an Issuer or a ClusterIssuer), some not (one error, or eight).
var reviewMeshes = []string{"documented", "unknown-fields", "external-issuer", "cacert-file", "other-backend-types", "issuerref-missing-name", "many-errors"}

// reviews wraps the example Meshes in AdmissionReviews for CREATE.
func reviews() ([][]byte, error) {
	var out [][]byte
	for _, f := range reviewMeshes {
		y, err := testdata("meshes/" + f + ".yaml")
		if err != nil {
			return nil, err
		}
		obj, err := yaml.YAMLToJSON(y)
		if err != nil {
			return nil, err
		}
		var meta struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		_ = json.Unmarshal(obj, &meta)
		review, err := json.Marshal(map[string]any{
			"apiVersion": "admission.k8s.io/v1",
			"kind":       "AdmissionReview",
			"request": map[string]any{
				"uid":       fmt.Sprintf("bench-%s", f),
				"kind":      map[string]string{"group": "kuma.io", "version": "v1alpha1", "kind": "Mesh"},
				"resource":  map[string]string{"group": "kuma.io", "version": "v1alpha1", "resource": "meshes"},
				"name":      meta.Metadata.Name,
				"operation": "CREATE",
				"object":    json.RawMessage(obj),
			},
		})
		if err != nil {
			return nil, err
		}
		out = append(out, review)
	}
	return out, nil
}
