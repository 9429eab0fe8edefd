package e2e

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/chart"
)

const chartServiceAccount = "system:serviceaccount:" + chart.Namespace + ":meshcert"

// TestChartInstallsAndItsRBACIsEnough applies the chart's manifests to the
// real API server with server-side apply, then runs meshcert as the chart's
// ServiceAccount, under exactly the chart's RBAC, through a full issuance.
func TestChartInstallsAndItsRBACIsEnough(t *testing.T) {
	ctx := context.Background()
	const team = "chart-team"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", team)})
	manifests, err := chart.Render("--set", "dataplaneNamespaces={"+team+"}", "--set", "kumaCRDs.install=true")
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range manifests {
		opts := []client.PatchOption{client.FieldOwner("helm"), client.ForceOwnership}
		switch obj.GetKind() {
		case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
			// Registered for real, they would send every Mesh of this test
			// cluster to a Service with no pods.
			opts = append(opts, client.DryRunAll)
		}
		if err := testEnv.cluster.Client.Patch(ctx, obj, client.Apply, opts...); err != nil {
			t.Errorf("the API server refused %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		if obj.GetKind() != "CustomResourceDefinition" {
			// Left, they would stop a helm release of the same name from
			// installing (TestUpgradeAndUninstallGuides). The CRDs serve
			// every test.
			t.Cleanup(func() { _ = client.IgnoreNotFound(testEnv.cluster.Client.Delete(context.Background(), obj)) })
		}
	}
	if t.Failed() {
		return
	}

	// meshcert as the chart's ServiceAccount: leader election, the webhook's
	// caches and the reconciler all under the chart's RBAC.
	cfg, err := testEnv.cluster.MeshcertConfig(systemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataplaneNamespaces = []string{team}
	cfg.LeaderElect = true
	cfg.LeaderElectionID = "meshcert-leader"
	cfg.WebhookPort = freePort(t) // served, not registered: its caches must sync
	logStart := len(testEnv.logs.String())
	m, err := testEnv.cluster.StartMeshcert(ctx, cfg, localcluster.MeshcertOptions{Logs: testEnv.logs, As: chartServiceAccount})
	if err != nil {
		t.Fatalf("meshcert did not become ready as the chart's ServiceAccount: %v\n%s", err, localcluster.LastLines(testEnv.logs.String(), 30))
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Error(err)
		}
	})

	applyMesh(t, certManagerMesh("chart", "Issuer", "mesh-ca", "", ""))
	deleteMeshAtEnd(t, "chart")
	createObject(t, newDataplane(team, "web", "chart", map[string]string{"kuma.io/service": "web"}))
	s := waitSecret(t, team, "web", 30*time.Second, nil)
	assertValidSecret(t, s, []string{"spiffe://chart/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)
	if logs := testEnv.logs.String()[logStart:]; strings.Contains(logs, "forbidden") {
		t.Errorf("meshcert was refused something under the chart's RBAC:\n%s", grepLines(logs, "forbidden"))
	}

	// And no more than that.
	for name, attrs := range map[string]authorizationv1.ResourceAttributes{
		"list Secrets cluster-wide":         {Verb: "list", Resource: "secrets"},
		"get a Secret of another namespace": {Verb: "get", Resource: "secrets", Namespace: "default", Name: "x"},
		"create a Secret elsewhere":         {Verb: "create", Resource: "secrets", Namespace: "default"},
		"delete a Mesh":                     {Verb: "delete", Group: "kuma.io", Resource: "meshes", Name: "chart"},
		"update a Dataplane":                {Verb: "update", Group: "kuma.io", Resource: "dataplanes", Namespace: team, Name: "web"},
		"renew another Lease":               {Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: chart.Namespace, Name: "kube-scheduler"},
		"approve CertificateRequests":       {Verb: "approve", Group: "cert-manager.io", Resource: "signers", Name: "issuers.cert-manager.io/*"},
	} {
		if allowed(t, attrs) {
			t.Errorf("the chart's ServiceAccount may %s", name)
		}
	}
	if !allowed(t, authorizationv1.ResourceAttributes{Verb: "list", Resource: "secrets", Namespace: team}) {
		t.Error("the chart's ServiceAccount may not list Secrets in its dataplane namespace")
	}
}

// allowed asks the API server whether the chart's ServiceAccount may do it.
func allowed(t *testing.T, attrs authorizationv1.ResourceAttributes) bool {
	t.Helper()
	return allowedAs(t, chartServiceAccount, attrs)
}

// allowedAs asks the API server whether user may do it.
func allowedAs(t *testing.T, user string, attrs authorizationv1.ResourceAttributes) bool {
	t.Helper()
	cfg := rest.CopyConfig(testEnv.cluster.Config)
	cfg.Impersonate.UserName = user
	c, err := client.New(cfg, client.Options{Scheme: app.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}
	if err := c.Create(context.Background(), review); err != nil {
		t.Fatal(err)
	}
	return review.Status.Allowed
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
