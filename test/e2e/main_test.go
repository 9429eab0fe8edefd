// Package e2e runs meshcert against a real kube-apiserver and etcd, real
// cert-manager controllers and the real kubectl.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"

	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/test/chart"
	"github.com/meshcert/meshcert/test/harness"
	"github.com/meshcert/meshcert/test/output"
)

const systemNamespace = "kong-mesh-system"

var update = flag.Bool("update", false, "rewrite the golden files from kubectl's actual output")

// testEnv is the cluster and meshcert shared by every test in the package.
var testEnv struct {
	cluster *localcluster.Cluster
	// hooks approve every request but those of the denied-ca issuer, and
	// sign for the external issuer group.
	hooks *harness.CertificateRequestHooks
	// ca signs for the mesh-ca Issuer and ClusterIssuer, other for other-ca.
	ca, other *testpki.CA
	logs      *output.Buffer
	// signer is cert-manager's CA signer, which a test stops for an outage.
	signer *localcluster.CertManager
}

// startSigner starts cert-manager's CA signer of CertificateRequests.
func startSigner() error {
	var err error
	testEnv.signer, err = testEnv.cluster.StartCertManager(context.Background(), localcluster.CertManagerOptions{
		ClusterResourceNamespace: systemNamespace,
		Controllers:              []string{"certificaterequests-issuer-ca"},
	})
	return err
}

// stopSigner stops cert-manager's CA signer for the rest of the test, or
// until the returned restart is called.
func stopSigner(t *testing.T) (restart func()) {
	t.Helper()
	testEnv.signer.Stop()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = startSigner()
		}
	})
	return func() {
		t.Helper()
		if err := startSigner(); err != nil {
			t.Fatal(err)
		}
		restarted = true
	}
}

// The issuer group of the test's external issuer, which sets no status.ca.
const externalGroup = "external.test.meshcert.io"

// approveAllButDenied is the approval policy of the tests: it denies the
// requests for the denied-ca Issuer, as approver-policy would, and leaves
// those for the policy-ca Issuer and the chart's webhook certificate to
// approver-policy itself, and the other
// requests of the node agents to meshcert's approver (agentSigners).
func approveAllButDenied(cr *cmapi.CertificateRequest) harness.Decision {
	switch {
	case cr.Spec.IssuerRef.Name == policyIssuer, cr.Spec.IssuerRef.Name == policyWebhookIssuer:
		return harness.Decision{Abstain: true}
	case cr.Spec.IssuerRef.Name == "denied-ca":
		return harness.Decision{Message: "no policy allows requests for denied-ca"}
	case cr.Spec.Username == agentUser:
		return harness.Decision{Abstain: true}
	}
	return harness.Decision{Approve: true, Message: "allowed by the test policy"}
}

// agentSigners are the signers whose agent requests meshcert decides: all
// but denied-ca, whose requests the test policy denies.
var agentSigners = []string{
	"clusterissuers.cert-manager.io/*",
	"issuers.cert-manager.io/" + systemNamespace + ".mesh-ca",
	"issuers.cert-manager.io/" + systemNamespace + ".other-ca",
	"issuers.cert-manager.io/" + systemNamespace + "." + policyIssuer,
}

func TestMain(m *testing.M) {
	flag.Parse()
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	ctx := context.Background()
	c, err := localcluster.Start(localcluster.Options{Webhooks: true})
	if err != nil {
		return 0, err
	}
	defer c.Stop()
	testEnv.cluster = c
	if err := c.InstallCRDs(); err != nil {
		return 0, err
	}

	// cert-manager's issuers and CA signer; approval is the test policy's.
	cm, err := c.StartCertManager(ctx, localcluster.CertManagerOptions{
		ClusterResourceNamespace: systemNamespace,
		Controllers:              []string{"issuers", "clusterissuers"},
	})
	if err != nil {
		return 0, err
	}
	defer cm.Stop()
	if err := startSigner(); err != nil {
		return 0, err
	}
	defer func() { testEnv.signer.Stop() }()
	if err := setup(ctx, c); err != nil {
		return 0, err
	}
	requesterCtx, stopRequester := context.WithCancel(ctx)
	defer stopRequester()
	if err := c.StartRequesterIdentity(requesterCtx); err != nil {
		return 0, err
	}
	testEnv.hooks = &harness.CertificateRequestHooks{Policy: approveAllButDenied, ExternalGroup: externalGroup, ExternalCA: testEnv.other}
	hooksCtx, stopHooks := context.WithCancel(ctx)
	defer stopHooks()
	if err := harness.StartHooks(hooksCtx, c, testEnv.hooks); err != nil {
		return 0, err
	}

	// The webhook, shared by all tests; each reconciler test runs its own
	// reconciler.
	cfg, err := c.MeshcertConfig(systemNamespace)
	if err != nil {
		return 0, err
	}
	cfg.ReconcilerEnabled = false
	cfg.ApproveAgentsOf, cfg.ApproveSigners = chart.Namespace+"/"+agentAccount, agentSigners
	testEnv.logs = &output.Buffer{}
	mc, err := c.StartMeshcert(ctx, cfg, localcluster.MeshcertOptions{Logs: testEnv.logs})
	if err != nil {
		return 0, err
	}
	code := m.Run()
	if err := mc.Stop(); err != nil {
		return 0, fmt.Errorf("meshcert did not stop cleanly: %w", err)
	}
	return code, nil
}

// setup creates what the manifests under testdata refer to: the namespaces,
// the mesh Secrets, a CA Issuer and ClusterIssuer named mesh-ca, and the
// Issuers other-ca (another CA) and denied-ca (whose requests are denied).
func setup(ctx context.Context, c *localcluster.Cluster) error {
	for _, f := range []string{"setup/namespaces.yaml", "setup/mesh-secrets.yaml"} {
		if _, stderr, err := kubectlIn(ctx, nil, "apply", "-f", f); err != nil {
			return fmt.Errorf("applying %s: %v: %s", f, err, stderr)
		}
	}
	var err error
	if testEnv.ca, err = testpki.New("mesh-ca", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived)); err != nil {
		return err
	}
	if testEnv.other, err = testpki.New("other-ca", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived)); err != nil {
		return err
	}
	return localcluster.CreateCAIssuers(ctx, c.Client, []localcluster.CAIssuer{
		{Name: "mesh-ca", Namespace: systemNamespace, SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: testEnv.ca},
		{Name: "mesh-ca", SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: testEnv.ca},
		{Name: "other-ca", Namespace: systemNamespace, SecretName: "other-ca", SecretNamespace: systemNamespace, CA: testEnv.other},
		{Name: "denied-ca", Namespace: systemNamespace, SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: testEnv.ca},
	})
}

// kubectlIn runs kubectl from the testdata folder, so file names in its
// output read as they do in the examples.
func kubectlIn(ctx context.Context, stdin []byte, args ...string) (string, string, error) {
	return testEnv.cluster.KubectlIn(ctx, "../testdata", stdin, args...)
}

func testdataFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join("..", "testdata", name))
}
