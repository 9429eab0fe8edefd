package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/walkthrough"
)

// The names docs/upgrade.md and docs/uninstall.md use.
const (
	guideRelease   = "meshcert"
	guideNamespace = "meshcert-system"
	guideWorkloads = "workloads"
	guideMesh      = "payments"
	guideIdentity  = "payments-identity"
)

var guideIdentityManifest = `apiVersion: kuma.io/v1alpha1
kind: MeshIdentity
metadata:
  name: ` + guideIdentity + `
  namespace: ` + systemNamespace + `
  labels:
    kuma.io/mesh: ` + guideMesh + `
  annotations:
    meshcert.io/issuer-name: mesh-ca
spec:
  selector:
    dataplane:
      matchLabels: {app: web}
  provider:
    type: Spire
    spire: {}
`

// TestUpgradeAndUninstallGuides installs meshcert with helm, gives it a Mesh
// and a MeshIdentity to serve, runs the walk-throughs of docs/upgrade.md and
// docs/uninstall.md as written, and checks that the cluster is then as
// uninstall.md says: the release's objects gone, meshcert's own left where
// it says so, and Mesh writes no longer sent to a webhook with no pods.
func TestUpgradeAndUninstallGuides(t *testing.T) {
	ctx := context.Background()
	c := testEnv.cluster.Client
	helm := os.Getenv(localcluster.HelmEnv)
	if helm == "" {
		t.Fatalf("%s is not set", localcluster.HelmEnv)
	}
	helmHome := t.TempDir()
	env := []string{
		"KUBECONFIG=" + testEnv.cluster.Kubeconfig,
		"PATH=" + filepath.Dir(helm) + ":" + os.Getenv(localcluster.AssetsEnv) + ":" + os.Getenv("PATH"),
		"HELM_CONFIG_HOME=" + filepath.Join(helmHome, "config"),
		"HELM_CACHE_HOME=" + filepath.Join(helmHome, "cache"),
		"HELM_DATA_HOME=" + filepath.Join(helmHome, "data"),
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	sh := func(command string) (string, error) {
		cmd := exec.Command("bash", "-o", "pipefail", "-c", command)
		cmd.Dir, cmd.Env = root, append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// What meshcert serves, made before the install: once the chart's
	// webhooks are registered, no Mesh write passes in this cluster (below).
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", guideWorkloads)})
	applyMesh(t, certManagerMesh(guideMesh, "Issuer", "mesh-ca", "", ""))
	deleteMeshAtEnd(t, guideMesh)
	if out, stderr, err := testEnv.cluster.Kubectl(ctx, []byte(guideIdentityManifest), "apply", "-f", "-"); err != nil {
		t.Fatalf("applying the MeshIdentity: %v\n%s%s", err, out, stderr)
	}
	t.Cleanup(func() {
		_, _, _ = testEnv.cluster.Kubectl(context.Background(), []byte(guideIdentityManifest), "delete", "--ignore-not-found", "-f", "-")
	})
	createObject(t, newDataplane(guideWorkloads, "web", guideMesh, map[string]string{"kuma.io/service": "web"}))

	// This cluster has Kuma's CRDs before any test, a user's without Kuma
	// has none: they are marked as the release's for helm to adopt them, as
	// it would have created them.
	crdNames := []string{"meshes.kuma.io", "dataplanes.kuma.io", "meshidentities.kuma.io", "meshtrusts.kuma.io"}
	for _, name := range crdNames {
		patchCRDMetadata(t, name, map[string]any{
			"labels":      map[string]any{"app.kubernetes.io/managed-by": "Helm"},
			"annotations": map[string]any{"meta.helm.sh/release-name": guideRelease, "meta.helm.sh/release-namespace": guideNamespace},
		})
	}
	t.Cleanup(func() {
		for _, name := range crdNames {
			patchCRDMetadata(t, name, map[string]any{
				"annotations": map[string]any{"meta.helm.sh/release-name": nil, "meta.helm.sh/release-namespace": nil},
			})
		}
	})

	install := "helm install " + guideRelease + " charts/meshcert --namespace " + guideNamespace + " --create-namespace" +
		" --set systemNamespace=" + systemNamespace + " --set 'dataplaneNamespaces={" + guideWorkloads + "}'" +
		" --set agent.enabled=true --set reconciler.publishTrustBundles=true --set kumaCRDs.install=true"
	if out, err := sh(install); err != nil {
		t.Fatalf("%s: %v\n%s", install, err, out)
	}
	t.Cleanup(func() {
		// Only if the guide's own uninstall did not run.
		if out, err := sh("helm uninstall " + guideRelease + " --namespace " + guideNamespace + " --ignore-not-found"); err != nil {
			t.Errorf("helm uninstall: %v\n%s", err, out)
		}
	})

	// This cluster runs no pods: meshcert runs here as the chart's
	// ServiceAccount, under exactly the RBAC helm installed, with the flags
	// of the chart's Deployment that matter here.
	cfg, err := testEnv.cluster.MeshcertConfig(systemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataplaneNamespaces = []string{guideWorkloads}
	cfg.LeaderElect = true
	cfg.LeaderElectionNamespace = guideNamespace
	cfg.LeaderElectionID = guideRelease + "-leader"
	cfg.PublishTrustBundles = true
	cfg.WebhookPort = freePort(t) // served, not registered: its caches must sync
	m, err := testEnv.cluster.StartMeshcert(ctx, cfg, localcluster.MeshcertOptions{
		Logs: testEnv.logs, As: "system:serviceaccount:" + guideNamespace + ":" + guideRelease,
	})
	if err != nil {
		t.Fatalf("meshcert did not start as the chart's ServiceAccount: %v\n%s", err, localcluster.LastLines(testEnv.logs.String(), 30))
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			if err := m.Stop(); err != nil {
				t.Errorf("stopping meshcert: %v", err)
			}
		}
	}
	t.Cleanup(stop)

	var mt *kuma.MeshTrustResource
	waitFor(t, 30*time.Second, "the MeshTrust of "+guideIdentity, func() bool { mt = meshTrustOf(t, guideIdentity); return mt != nil })
	secret := waitSecret(t, guideWorkloads, "web", 30*time.Second, nil)
	// uninstall.md: these go with their MeshIdentity and Dataplane. This
	// cluster runs no garbage collector, so the owner references it acts on
	// are checked.
	if owners := mt.OwnerReferences; len(owners) != 1 || owners[0].Kind != "MeshIdentity" || owners[0].Name != guideIdentity {
		t.Errorf("the MeshTrust's owners %+v, want its MeshIdentity", owners)
	}
	if owners := secret.OwnerReferences; len(owners) != 1 || owners[0].Kind != "Dataplane" || owners[0].Name != "web" {
		t.Errorf("the Secret's owners %+v, want its Dataplane", owners)
	}
	waitFor(t, 30*time.Second, "the published roots of "+guideMesh, func() bool {
		return c.Get(ctx, types.NamespacedName{Namespace: systemNamespace, Name: dataplane.TrustBundleName(guideMesh)}, &corev1.ConfigMap{}) == nil
	})

	// What uninstall.md warns of: the chart's webhooks fail closed, and
	// with no pod behind their Service a Mesh write is refused.
	if out, err := sh("kubectl label mesh " + guideMesh + " guides=blocked"); err == nil || !strings.Contains(out, "failed calling webhook") {
		t.Fatalf("a Mesh write with the chart's webhooks unanswered: err %v, want it refused by the webhook:\n%s", err, out)
	}

	steps := func(file string) []walkthrough.Step {
		all, err := walkthrough.Steps(root, "cluster")
		if err != nil {
			t.Fatal(err)
		}
		var of []walkthrough.Step
		for _, s := range all {
			if s.File == file {
				of = append(of, s)
			}
		}
		return of
	}
	runner := walkthrough.Runner{
		Dir: root, Env: env, Timeout: 30 * time.Second,
		// No pod of this cluster ever becomes ready (it has no nodes), so
		// helm's --wait would wait for good.
		Rewrite: func(command string) string { return strings.Replace(command, " --wait", "", 1) },
	}
	runner.Run(t, steps("docs/upgrade.md"))
	// helm uninstall deletes the Deployment, and with it meshcert's pods,
	// first: the process standing in for them ends here.
	stop()
	runner.Run(t, steps("docs/uninstall.md"))

	t.Run("the release's objects are gone", func(t *testing.T) {
		for _, obj := range []client.Object{
			objectOf("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", guideRelease),
			objectOf("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "", guideRelease),
			objectOf("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "", guideRelease+"-agent-own-requests"),
			objectOf("apps/v1", "Deployment", guideNamespace, guideRelease),
			objectOf("apps/v1", "DaemonSet", guideNamespace, guideRelease+"-agent"),
			objectOf("v1", "Service", guideNamespace, guideRelease),
			objectOf("v1", "ServiceAccount", guideNamespace, guideRelease),
			objectOf("rbac.authorization.k8s.io/v1", "ClusterRole", "", guideRelease),
			objectOf("cert-manager.io/v1", "Certificate", guideNamespace, guideRelease+"-webhook"),
		} {
			if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); !apierrors.IsNotFound(err) {
				t.Errorf("%s %s: %v, want it gone", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
			}
		}
		if out, err := sh("helm status " + guideRelease + " --namespace " + guideNamespace); err == nil {
			t.Errorf("the release is still there:\n%s", out)
		}
	})

	t.Run("the kept CRDs still serve the Meshes", func(t *testing.T) {
		for _, name := range crdNames {
			crd := objectOf("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", name)
			if err := c.Get(ctx, client.ObjectKeyFromObject(crd), crd); err != nil || crd.GetDeletionTimestamp() != nil {
				t.Errorf("CRD %s: %v, deleting: %v, want it kept", name, err, crd.GetDeletionTimestamp() != nil)
			}
		}
		mesh := objectOf("kuma.io/v1alpha1", "Mesh", "", guideMesh)
		if err := c.Get(ctx, client.ObjectKeyFromObject(mesh), mesh); err != nil {
			t.Errorf("the Mesh: %v", err)
		}
	})

	t.Run("Mesh writes go through", func(t *testing.T) {
		if out, err := sh("kubectl label mesh " + guideMesh + " guides=done"); err != nil {
			t.Errorf("a Mesh write after the uninstall: %v\n%s", err, out)
		}
	})

	t.Run("what the guide leaves is owned as it says, what it removes is gone", func(t *testing.T) {
		var mt kuma.MeshTrustResource
		err := c.Get(ctx, client.ObjectKey{Namespace: systemNamespace, Name: guideIdentity}, &mt)
		if !apierrors.IsNotFound(err) {
			t.Errorf("MeshTrust %s: %v, want it deleted by the guide's last step", guideIdentity, err)
		}
		mid := objectOf("kuma.io/v1alpha1", "MeshIdentity", systemNamespace, guideIdentity)
		if err := c.Get(ctx, client.ObjectKeyFromObject(mid), mid); err != nil {
			t.Errorf("the MeshIdentity, which is the user's: %v", err)
		}
		for _, obj := range []client.Object{
			&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: guideNamespace, Name: guideRelease + "-leader"}},
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: dataplane.TrustBundleName(guideMesh)}},
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: guideWorkloads, Name: dataplane.SecretName("web")}},
		} {
			if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); !apierrors.IsNotFound(err) {
				t.Errorf("%T %s: %v, want it removed by the guide", obj, obj.GetName(), err)
			}
		}
		left := listRequests(t, client.MatchingLabels{kuma.ManagedByLabel: kuma.ManagedByValue})
		if len(left) > 0 {
			t.Errorf("%d CertificateRequests of meshcert left, want none", len(left))
		}
	})
}

// objectOf is an object of that kind and name, to get.
func objectOf(apiVersion, kind, namespace, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	u.SetNamespace(namespace)
	u.SetName(name)
	return u
}

// patchCRDMetadata merges labels and annotations into a CRD's metadata; a
// nil value removes one.
func patchCRDMetadata(t *testing.T, name string, metadata map[string]any) {
	t.Helper()
	crd := objectOf("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", name)
	patch, err := json.Marshal(map[string]any{"metadata": metadata})
	if err != nil {
		t.Fatal(err)
	}
	if err := testEnv.cluster.Client.Patch(context.Background(), crd, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Errorf("marking CRD %s: %v", name, err)
	}
}
