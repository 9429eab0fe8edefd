//go:build linux

package node_test

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"maps"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/test/harness"
	"github.com/meshcert/meshcert/test/node"
	"github.com/meshcert/meshcert/test/node/workload/status"
	"github.com/meshcert/meshcert/test/walkthrough"
)

const (
	release         = "meshcert"
	systemNamespace = "meshcert-system"
	csiNamespace    = "spiffe-csi"
	// workloads holds the pods that get Dataplanes, baseline those that do
	// not ask for an identity.
	workloads = "workloads"
	baseline  = "baseline"
	issuer    = "mesh-ca"
	mesh      = "node"
	// trustDomain and partOf are the MeshIdentity's: it selects the
	// Dataplanes labelled partOf.
	trustDomain = "node.example.com"
	partOf      = "meshcert-node-test"
	// svidLifetime is the identities' lifetime: the agent renews them at
	// 4/5 of it, so that a test sees renewals.
	svidLifetime = time.Minute

	workloadImage = "meshcert.test/workload:1"
	// meshcertImage is the chart's default image, so that the walk-through
	// installs it as written.
	meshcertImage  = "ghcr.io/meshcert/meshcert:0.1.0"
	csiDriverImage = "meshcert.test/spiffe-csi-driver:0.2.6"
	registrarImage = "meshcert.test/csi-registrar:1"
	// noDataplane marks a pod that the test's pod converter leaves alone.
	noDataplane = "meshcert.test/no-dataplane"
)

// meshcertEnv is meshcert installed by its chart on a real node, with
// cert-manager, approver-policy and the SPIFFE CSI driver.
type meshcertEnv struct {
	n         *node.Node
	cluster   *localcluster.Cluster
	c         client.WithWatch
	ca        *testpki.CA
	helm      string
	socketDir string
	// meshSystem is the mesh's system namespace: the issuer's, the
	// MeshIdentities' and the agents' requests'.
	meshSystem string
	// workloadBinary is the workload program, also run on the node.
	workloadBinary string
	// meshcertBinary is meshcert's binary, as in its image.
	meshcertBinary string
	chartArgs      []string

	mu sync.Mutex
	// requests are the agents' CertificateRequests seen, by name.
	requests map[string]*requestSeen
	// ready is when each pod was first seen Ready, by namespace/name.
	ready map[string]time.Time
}

// requestSeen is what the test saw of one CertificateRequest.
type requestSeen struct {
	created   time.Time
	dataplane string
	node      string
	approval  string
}

// startMeshcert starts a node, installs meshcert with the chart's agent, the
// CSI driver, a Mesh and a MeshIdentity, and the test's pod converter.
func startMeshcert(t *testing.T) *meshcertEnv {
	t.Helper()
	return startMeshcertWith(t, meshcertOptions{})
}

// meshcertOptions changes what startMeshcertWith installs around meshcert.
type meshcertOptions struct {
	// meshSystem is the mesh's system namespace, where the issuer, the
	// MeshIdentities and the agents' requests live; meshcert's own
	// namespace unless set.
	meshSystem string
	// kuma installs Kuma before meshcert. Kuma's control plane then makes
	// the Dataplanes and Kuma's chart installs Kuma's CRDs, so the test's
	// pod converter does not run, meshcert's chart installs no Kuma CRDs,
	// and no Mesh or MeshIdentity is applied: the test applies its own.
	kuma func(t *testing.T, e *meshcertEnv)
}

// startMeshcertWith is startMeshcert with opts.
func startMeshcertWith(t *testing.T, opts meshcertOptions) *meshcertEnv {
	t.Helper()
	ctx := context.Background()
	helm := os.Getenv(localcluster.HelmEnv)
	if helm == "" {
		t.Fatal("HELM is not set: export HELM=$(hack/cluster-bins.sh helm)")
	}
	if os.Getenv(harness.ApproverPolicyEnv) == "" {
		t.Fatalf("%s is not set: export %s=$(hack/cluster-bins.sh approver-policy)", harness.ApproverPolicyEnv, harness.ApproverPolicyEnv)
	}
	started := time.Now()
	n, cluster := startNode(t)
	e := &meshcertEnv{n: n, helm: helm, socketDir: filepath.Join(n.Dir(), "agent-sockets"), meshSystem: cmp.Or(opts.meshSystem, systemNamespace),
		requests: map[string]*requestSeen{}, ready: map[string]time.Time{}}
	e.cluster = cluster
	var err error
	if e.c, err = client.NewWithWatch(cluster.Config, client.Options{Scheme: app.Scheme()}); err != nil {
		t.Fatal(err)
	}
	if err := installCertManagerCRDs(cluster); err != nil {
		t.Fatal(err)
	}
	images := e.buildImages(t)

	// cert-manager's controllers without its default approver: meshcert
	// approves the agents' requests, approver-policy the others.
	cm, err := cluster.StartCertManager(ctx, localcluster.CertManagerOptions{
		ClusterResourceNamespace: systemNamespace,
		Controllers:              []string{"issuers", "clusterissuers", "certificaterequests-issuer-ca"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cm.Stop)
	webhookCtx, stopWebhook := context.WithCancel(ctx)
	t.Cleanup(stopWebhook)
	if err := cluster.StartRequesterIdentity(webhookCtx); err != nil {
		t.Fatal(err)
	}
	if err := localcluster.EnsureNamespace(ctx, cluster.Client, systemNamespace); err != nil {
		t.Fatal(err)
	}
	ap, err := harness.StartApproverPolicy(cluster, systemNamespace, filepath.Join(n.Dir(), "logs", "approver-policy.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ap.Kill)
	ca, err := testpki.New("meshcert node test root", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived))
	if err != nil {
		t.Fatal(err)
	}
	e.ca = ca
	// The mesh's issuer, in the mesh's system namespace: with Kuma, once
	// Kuma's install has made it.
	createIssuer := func() {
		if err := localcluster.CreateCAIssuers(ctx, cluster.Client, []localcluster.CAIssuer{{
			Name: issuer, Namespace: e.meshSystem, SecretName: issuer, SecretNamespace: e.meshSystem, CA: ca,
		}}); err != nil {
			t.Fatal(err)
		}
	}
	if opts.kuma == nil {
		createIssuer()
	}
	for _, img := range images {
		if err := n.LoadImage(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	caBundle := e.createWebhookSecret(t)

	for _, ns := range []string{workloads, baseline, csiNamespace} {
		if err := localcluster.EnsureNamespace(ctx, cluster.Client, ns); err != nil {
			t.Fatal(err)
		}
	}
	go e.recordRequests(ctx, t)
	if opts.kuma == nil {
		go e.convertPods(ctx, t)
	}

	// As a user installs it, by the walk-through of docs/installing.md, with
	// what this node cannot have as a user's cluster does: the agent's
	// socket folder under the node's folder (which the node's clean-up
	// removes) and the webhook's certificate from a Secret (no cainjector).
	// The image is the chart's default, loaded above.
	nodeArgs := []string{
		"--set", "agent.socketDir=" + e.socketDir,
		"--set", "webhook.certificate.source=secret", "--set", "webhook.certificate.secretName=meshcert-webhook-tls",
		"--set", "webhook.certificate.caBundle=" + caBundle,
	}
	// The walk-through's values, for the test's own helm upgrade.
	e.chartArgs = append([]string{
		"--set", "agent.enabled=true",
		"--set", "approverPolicy.enabled=true", "--set", "approverPolicy.issuers[0].name=" + issuer,
		// The reconciler keeps the MeshTrust the agent serves as the bundle.
		"--set", "dataplaneNamespaces={" + workloads + "}",
	}, nodeArgs...)
	installMeshcert := func(command string) string {
		if !strings.HasPrefix(command, "helm install meshcert ") {
			return command
		}
		return command + " --timeout 3m " + strings.Join(nodeArgs, " ")
	}
	if opts.kuma != nil {
		// docs/kuma.md: Kuma, then the issuer, then meshcert.
		opts.kuma(t, e)
		createIssuer()
		e.chartArgs = append(e.chartArgs, "--set", "systemNamespace="+e.meshSystem)
		e.runWalkthrough(t, walkthroughPart(t, "kuma", 2), installMeshcert)
	} else {
		// No Kuma: meshcert's chart installs Kuma's CRDs.
		nodeArgs = append(nodeArgs, "--set", "kumaCRDs.install=true")
		e.chartArgs = append(e.chartArgs, "--set", "kumaCRDs.install=true")
		e.runWalkthrough(t, walkthroughSteps(t, "node"), installMeshcert)
	}
	t.Logf("meshcert installed %s after the start", time.Since(started).Round(time.Millisecond))

	e.startCSIDriver(t)
	if opts.kuma == nil {
		e.apply(t, identities)
		waitFor(t, n, 2*time.Minute, "the MeshTrust of the identity", func() bool {
			list := &kuma.MeshTrustResourceList{}
			return e.c.List(ctx, list, client.InNamespace(systemNamespace)) == nil && len(list.Items) > 0
		})
	}
	for _, sa := range []string{"default", "web", "api", "fleet"} {
		for _, ns := range []string{workloads, baseline} {
			if err := e.c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	t.Logf("the node serves identities %s after the start", time.Since(started).Round(time.Millisecond))
	return e
}

// walkthroughSteps are the steps of setup's walk-throughs.
func walkthroughSteps(t *testing.T, setup string) []walkthrough.Step {
	t.Helper()
	steps, err := walkthrough.Steps(repoRoot(t), setup)
	if err != nil {
		t.Fatal(err)
	}
	return steps
}

// walkthroughPart is part n of setup's walk-throughs, which must have it.
func walkthroughPart(t *testing.T, setup string, n int) []walkthrough.Step {
	t.Helper()
	part := walkthrough.Part(walkthroughSteps(t, setup), n)
	if len(part) == 0 {
		t.Fatalf("the %s walk-throughs have no part %d", setup, n)
	}
	return part
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// runWalkthrough runs steps against the node, as written but for what
// rewrite adds to them: only what this node cannot have as a user's cluster
// does.
func (e *meshcertEnv) runWalkthrough(t *testing.T, steps []walkthrough.Step, rewrite func(string) string) {
	t.Helper()
	walkthrough.Runner{
		Dir: repoRoot(t), Timeout: 5 * time.Minute,
		Env: []string{
			"KUBECONFIG=" + e.cluster.Kubeconfig,
			"PATH=" + filepath.Dir(e.meshcertBinary) + ":" + filepath.Dir(e.helm) + ":" + os.Getenv("PATH"),
		},
		Rewrite: rewrite,
	}.Run(t, steps)
}

// identities are the Mesh and the MeshIdentity, applied with kubectl so that
// the Mesh passes meshcert's webhook.
var identities = fmt.Sprintf(`apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: %[1]s
---
apiVersion: kuma.io/v1alpha1
kind: MeshIdentity
metadata:
  name: node-workloads
  namespace: %[2]s
  labels:
    kuma.io/mesh: %[1]s
  annotations:
    meshcert.io/issuer-name: %[3]s
    meshcert.io/duration: %[4]s
spec:
  selector:
    dataplane:
      matchLabels: {app.kubernetes.io/part-of: %[5]s}
  spiffeID:
    trustDomain: %[6]s
    path: "/ns/{{ .Namespace }}/sa/{{ .ServiceAccount }}"
  provider:
    type: Spire
    spire: {}
`, mesh, systemNamespace, issuer, svidLifetime, partOf, trustDomain)

func installCertManagerCRDs(cluster *localcluster.Cluster) error {
	dir, err := localcluster.CertManagerCRDDir()
	if err != nil {
		return err
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(b, crd); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		crds = append(crds, crd)
	}
	_, err = envtest.InstallCRDs(cluster.Config, envtest.CRDInstallOptions{CRDs: crds, MaxTime: time.Minute})
	return err
}

// buildImages builds meshcert as its Dockerfile does, the workload and the
// registrar, and images of them and of the SPIFFE CSI driver.
func (e *meshcertEnv) buildImages(t *testing.T) []node.Image {
	t.Helper()
	dir := t.TempDir()
	bin := func(name string) string { return filepath.Join(dir, name) }
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, b := range []struct{ pkg, out string }{
		{"github.com/meshcert/meshcert/cmd/meshcert", bin("meshcert")},
		{"github.com/meshcert/meshcert/test/node/workload", bin("workload")},
		{"github.com/meshcert/meshcert/test/node/csiregistrar", bin("csiregistrar")},
	} {
		wg.Go(func() { errs[i] = node.BuildStatic(context.Background(), b.pkg, b.out) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	e.workloadBinary, e.meshcertBinary = bin("workload"), bin("meshcert")
	return []node.Image{
		{Tag: meshcertImage, Binary: bin("meshcert"), Path: "/meshcert", User: "65532:65532"},
		{Tag: workloadImage, Binary: bin("workload"), Path: "/workload", User: "65532:65532"},
		{Tag: registrarImage, Binary: bin("csiregistrar"), Path: "/csiregistrar"},
		{Tag: csiDriverImage, Binary: filepath.Join(os.Getenv(node.BinsEnv), "spiffe-csi-driver"), Path: "/spiffe-csi-driver"},
	}
}

// createWebhookSecret makes the webhook's serving certificate for its
// Service, and returns the base64 of its CA for the chart.
func (e *meshcertEnv) createWebhookSecret(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	service := release + "." + systemNamespace + ".svc"
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: service},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{service, service + ".cluster.local"},
		IsCA:     true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: "meshcert-webhook-tls"},
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       certPEM,
			corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		},
	}
	if err := e.c.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(certPEM)
}

func (e *meshcertEnv) helmRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(e.helm, append(args, "--kubeconfig", e.cluster.Kubeconfig)...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s\nmeshcert's pods:\n%s", args[0], err, out, e.kubectl(t, "get", "pods", "-A", "-o", "wide"))
	}
	return string(out)
}

func (e *meshcertEnv) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := e.cluster.Kubectl(context.Background(), nil, args...)
	if err != nil {
		return fmt.Sprintf("kubectl %v: %v: %s", args, err, stderr)
	}
	return out
}

func (e *meshcertEnv) apply(t *testing.T, manifest string) {
	t.Helper()
	if _, stderr, err := e.cluster.Kubectl(context.Background(), []byte(manifest), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, stderr)
	}
}

// startCSIDriver runs the SPIFFE CSI driver as its example deploys it, with
// the test's registrar, pointed at the agent's socket folder, and waits
// until the kubelet has registered it.
func (e *meshcertEnv) startCSIDriver(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	hostPath := func(path string, typ corev1.HostPathType) corev1.VolumeSource {
		return corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &typ}}
	}
	labels := map[string]string{"app": "spiffe-csi-driver"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: csiNamespace, Name: "spiffe-csi-driver"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: "spiffe-csi-driver", Image: csiDriverImage, ImagePullPolicy: corev1.PullNever,
						Args: []string{"-workload-api-socket-dir", "/agent-sockets", "-csi-socket-path", "/spiffe-csi/csi.sock"},
						Env: []corev1.EnvVar{{Name: "MY_NODE_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "agent-sockets", MountPath: "/agent-sockets", ReadOnly: true},
							{Name: "csi-socket", MountPath: "/spiffe-csi"},
							{Name: "mountpoints", MountPath: "/var/lib/kubelet/pods", MountPropagation: ptr.To(corev1.MountPropagationBidirectional)},
						},
						SecurityContext: &corev1.SecurityContext{
							Privileged: ptr.To(true), ReadOnlyRootFilesystem: ptr.To(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}, {
						Name: "registrar", Image: registrarImage, ImagePullPolicy: corev1.PullNever,
						Args: []string{
							"-registration-socket", "/registration/csi.spiffe.io-reg.sock",
							"-kubelet-registration-path", "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock",
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "registration", MountPath: "/registration"}},
					}},
					Volumes: []corev1.Volume{
						{Name: "agent-sockets", VolumeSource: hostPath(e.socketDir, corev1.HostPathDirectoryOrCreate)},
						{Name: "csi-socket", VolumeSource: hostPath("/var/lib/kubelet/plugins/csi.spiffe.io", corev1.HostPathDirectoryOrCreate)},
						{Name: "mountpoints", VolumeSource: hostPath("/var/lib/kubelet/pods", corev1.HostPathDirectory)},
						{Name: "registration", VolumeSource: hostPath("/var/lib/kubelet/plugins_registry", corev1.HostPathDirectoryOrCreate)},
					},
				},
			},
		},
	}
	driver := &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: "csi.spiffe.io"},
		Spec: storagev1.CSIDriverSpec{
			AttachRequired: ptr.To(false), PodInfoOnMount: ptr.To(true),
			FSGroupPolicy:        ptr.To(storagev1.NoneFSGroupPolicy),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral},
		},
	}
	for _, obj := range []client.Object{driver, ds} {
		if err := e.c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, e.n, 2*time.Minute, "the kubelet to register csi.spiffe.io", func() bool {
		csiNode := &storagev1.CSINode{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: node.Name}, csiNode); err != nil {
			return false
		}
		for _, d := range csiNode.Spec.Drivers {
			if d.Name == "csi.spiffe.io" {
				return true
			}
		}
		return false
	})
}

// workloadPod is a pod of the workload image with the CSI volume, or, for
// the baseline, without it and asking for no SVID.
func workloadPod(namespace, name, serviceAccount string, labels map[string]string, svid bool) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec:       workloadPodSpec(serviceAccount, svid),
	}
}

func workloadPodSpec(serviceAccount string, svid bool) corev1.PodSpec {
	spec := corev1.PodSpec{
		ServiceAccountName:            serviceAccount,
		TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{{
			Name: "workload", Image: workloadImage, ImagePullPolicy: corev1.PullNever,
			Args: []string{"-no-svid"},
		}},
	}
	if svid {
		spec.Containers[0].Args = []string{"-addr", "unix:///spiffe-workload-api/socket"}
		spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "spiffe-workload-api", MountPath: "/spiffe-workload-api", ReadOnly: true}}
		spec.Volumes = []corev1.Volume{{Name: "spiffe-workload-api", VolumeSource: corev1.VolumeSource{
			CSI: &corev1.CSIVolumeSource{Driver: "csi.spiffe.io", ReadOnly: ptr.To(true)}}}}
	}
	return spec
}

// workloadLabels are the labels of a pod the MeshIdentity selects.
func workloadLabels(app string, extra map[string]string) map[string]string {
	labels := map[string]string{"app": app, "app.kubernetes.io/part-of": partOf}
	maps.Copy(labels, extra)
	return labels
}

// convertPods makes each pod of the workloads namespace its Dataplane once
// the pod has an address, as Kuma's pod converter does.
func (e *meshcertEnv) convertPods(ctx context.Context, t *testing.T) {
	made := map[string]bool{}
	e.watch(ctx, &corev1.PodList{}, "", func(ev watch.Event) {
		pod, ok := ev.Object.(*corev1.Pod)
		if !ok || ev.Type == watch.Deleted {
			return
		}
		if podReady(pod) {
			e.mu.Lock()
			key := pod.Namespace + "/" + pod.Name
			if _, seen := e.ready[key]; !seen {
				e.ready[key] = time.Now()
			}
			e.mu.Unlock()
		}
		if pod.Namespace != workloads || pod.Status.PodIP == "" || made[string(pod.UID)] || pod.Annotations[noDataplane] != "" {
			return
		}
		if err := e.c.Create(ctx, kumaDataplane(pod)); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Logf("creating the Dataplane of %s: %v", pod.Name, err)
			return
		}
		made[string(pod.UID)] = true
	})
}

// kumaDataplane is the Dataplane Kuma's pod converter makes for a pod of the
// mesh (Kuma v2.14.3, pkg/plugins/runtime/k8s/controllers/pod_converter.go,
// and its store, which keeps the service account, workload and display name
// as annotations): owned by the Pod as its controller, with the pod's labels
// over Kuma's own, the namespace label among them.
func kumaDataplane(pod *corev1.Pod) *kuma.DataplaneResource {
	labels := map[string]string{
		kuma.NamespaceLabel: pod.Namespace, "kuma.io/mesh": mesh,
		"kuma.io/env": "kubernetes", "kuma.io/origin": "zone", "kuma.io/proxy-type": "sidecar",
	}
	maps.Copy(labels, pod.Labels)
	app := pod.Labels["app"]
	spec, _ := json.Marshal(map[string]any{"networking": map[string]any{
		"address": pod.Status.PodIP,
		"inbound": []map[string]any{{"port": 8080, "tags": map[string]string{
			"kuma.io/service": app + "_" + pod.Namespace + "_svc_8080", "kuma.io/protocol": "tcp",
		}}},
	}})
	return &kuma.DataplaneResource{
		TypeMeta: metav1.TypeMeta{APIVersion: kuma.GroupVersion.String(), Kind: "Dataplane"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: pod.Namespace, Name: pod.Name, Labels: labels,
			Annotations: map[string]string{
				kuma.ServiceAccountLabel: pod.Spec.ServiceAccountName,
				kuma.WorkloadLabel:       app,
				kuma.DisplayNameKey:      pod.Name,
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Mesh: mesh,
		Spec: spec,
	}
}

// recordRequests records the agents' CertificateRequests as they come and
// are approved: the agents delete them once used.
func (e *meshcertEnv) recordRequests(ctx context.Context, t *testing.T) {
	e.watch(ctx, &cmapi.CertificateRequestList{}, e.meshSystem, func(ev watch.Event) {
		cr, ok := ev.Object.(*cmapi.CertificateRequest)
		if !ok || cr.Labels[agent.NodeLabel] == "" {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		seen := e.requests[cr.Name]
		if seen == nil {
			seen = &requestSeen{created: time.Now(), dataplane: cr.Annotations[kuma.DataplaneAnnotation], node: cr.Labels[agent.NodeLabel]}
			e.requests[cr.Name] = seen
		}
		for _, cond := range cr.Status.Conditions {
			if cond.Type == cmapi.CertificateRequestConditionApproved || cond.Type == cmapi.CertificateRequestConditionDenied {
				seen.approval = string(cond.Type) + "/" + cond.Reason
			}
		}
	})
}

// watch calls handle with each event of the objects of list, watching again
// whenever the watch ends, until ctx ends.
func (e *meshcertEnv) watch(ctx context.Context, list client.ObjectList, namespace string, handle func(watch.Event)) {
	for ctx.Err() == nil {
		w, err := e.c.Watch(ctx, list, client.InNamespace(namespace))
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			handle(ev)
		}
		w.Stop()
	}
}

// requestsSince are the agents' requests seen since from.
func (e *meshcertEnv) requestsSince(from time.Time) []requestSeen {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []requestSeen
	for _, r := range e.requests {
		if !r.created.Before(from) {
			out = append(out, *r)
		}
	}
	return out
}

func (e *meshcertEnv) readyAt(namespace, name string) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	at, ok := e.ready[namespace+"/"+name]
	return at, ok
}

// status reads what a workload pod holds, from the node over the bridge.
func (e *meshcertEnv) status(namespace, name string) (status.Status, error) {
	pod := &corev1.Pod{}
	if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, pod); err != nil {
		return status.Status{}, err
	}
	if pod.Status.PodIP == "" {
		return status.Status{}, fmt.Errorf("pod %s has no address yet", name)
	}
	httpClient := &http.Client{Timeout: 2 * time.Second}
	resp, err := httpClient.Get("http://" + pod.Status.PodIP + ":8080/svid")
	if err != nil {
		return status.Status{}, err
	}
	defer resp.Body.Close()
	var s status.Status
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// waitSVIDs waits until each pod holds an SVID received after since, and
// returns what they hold.
func (e *meshcertEnv) waitSVIDs(t *testing.T, namespace string, pods []string, since time.Time) map[string]status.Status {
	t.Helper()
	got := map[string]status.Status{}
	var last error
	defer func() {
		if t.Failed() {
			t.Logf("the last error: %v", last)
		}
	}()
	waitFor(t, e.n, 3*time.Minute, fmt.Sprintf("SVIDs of %d pods", len(pods)), func() bool {
		for _, p := range pods {
			if _, ok := got[p]; ok {
				continue
			}
			s, err := e.status(namespace, p)
			if err != nil {
				last = err
				return false
			}
			if s.ID == "" || s.FirstSVID.Before(since) {
				last = fmt.Errorf("pod %s holds no SVID yet, its last error %q", p, s.LastError)
				return false
			}
			got[p] = s
		}
		return true
	})
	return got
}

// statuses reads what each workload pod holds now.
func (e *meshcertEnv) statuses(t *testing.T, pods []string) map[string]status.Status {
	t.Helper()
	out := map[string]status.Status{}
	for _, p := range pods {
		s, err := e.status(workloads, p)
		if err != nil {
			t.Fatalf("reading pod %s: %v", p, err)
		}
		out[p] = s
	}
	return out
}

// waitUpdated waits until every pod has received an SVID since before and
// holds a valid one, with no lapse.
func (e *meshcertEnv) waitUpdated(t *testing.T, pods []string, before map[string]status.Status, timeout time.Duration) {
	t.Helper()
	pending := slices.Clone(pods)
	waitFor(t, e.n, timeout, "every workload to get a new SVID", func() bool {
		pending = slices.DeleteFunc(pending, func(p string) bool {
			s, err := e.status(workloads, p)
			return err == nil && s.Updates > before[p].Updates && time.Now().Before(s.NotAfter)
		})
		return len(pending) == 0
	})
	for _, p := range pods {
		if s, err := e.status(workloads, p); err != nil || s.Lapses != 0 {
			t.Errorf("pod %s: %d lapses (%v)", p, s.Lapses, err)
		}
	}
}

// watchPossession checks twice a second that every workload holds a valid
// SVID, until the agent pod old has been replaced by a Ready one and 20s
// more have passed, or timeout; it sends each lapse seen.
func (e *meshcertEnv) watchPossession(t *testing.T, pods []string, lapses chan<- string, timeout time.Duration, old types.UID) {
	deadline := time.Now().Add(timeout)
	var rolled time.Time
	for time.Now().Before(deadline) && (rolled.IsZero() || time.Since(rolled) < 20*time.Second) {
		for _, p := range pods {
			s, err := e.status(workloads, p)
			if err == nil && !time.Now().Before(s.NotAfter) {
				lapses <- fmt.Sprintf("pod %s held an expired SVID at %s", p, time.Now().Format(time.RFC3339))
				return
			}
		}
		if rolled.IsZero() {
			if a, err := e.agentPodOnce(); err == nil && a.UID != old && podReady(&a) {
				rolled = time.Now()
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// agentPod is the agent's one pod.
func (e *meshcertEnv) agentPod(t *testing.T) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	waitFor(t, e.n, time.Minute, "one agent pod", func() bool {
		var err error
		pod, err = e.agentPodOnce()
		return err == nil
	})
	return pod
}

func (e *meshcertEnv) agentPodOnce() (corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := e.c.List(context.Background(), pods, client.InNamespace(systemNamespace), client.MatchingLabels{"app.kubernetes.io/component": "agent"}); err != nil {
		return corev1.Pod{}, err
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	if len(live) != 1 {
		return corev1.Pod{}, fmt.Errorf("%d agent pods", len(live))
	}
	return live[0], nil
}

// startPods creates count pods named prefix-NN, one after the other, and
// returns when each was created.
func (e *meshcertEnv) startPods(t *testing.T, namespace, prefix string, count int, svid bool) map[string]time.Time {
	t.Helper()
	created := map[string]time.Time{}
	for i := range count {
		name := fmt.Sprintf("%s-%02d", prefix, i)
		pod := workloadPod(namespace, name, "fleet", workloadLabels("fleet", nil), svid)
		at := time.Now()
		if err := e.c.Create(context.Background(), pod); err != nil {
			t.Fatal(err)
		}
		created[name] = at
	}
	return created
}

// checkUninstalled fails on any object of the release left, and logs what
// else meshcert's run left.
func (e *meshcertEnv) checkUninstalled(t *testing.T) {
	t.Helper()
	kinds := "deployments,daemonsets,services,serviceaccounts,secrets,configmaps,roles,rolebindings,clusterroles,clusterrolebindings," +
		"mutatingwebhookconfigurations,validatingwebhookconfigurations,validatingadmissionpolicies,validatingadmissionpolicybindings," +
		"poddisruptionbudgets,certificaterequestpolicies,issuers,certificates"
	var left string
	waitFor(t, e.n, time.Minute, "the release's objects to go", func() bool {
		left = strings.TrimSpace(e.kubectl(t, "get", kinds, "-A", "-l", "app.kubernetes.io/instance="+release, "-o", "name"))
		return left == ""
	})
	// The chart keeps the CRDs it installed (helm.sh/resource-policy:
	// keep, as cert-manager's chart does): deleting them would delete every
	// Mesh, MeshIdentity and Dataplane with them.
	if keep := e.kubectl(t, "get", "crd", "meshidentities.kuma.io", "-o", `jsonpath={.metadata.annotations.helm\.sh/resource-policy}`); keep != "keep" {
		t.Errorf("the chart's Kuma CRDs went with the release (resource-policy %q)", keep)
	}
	// The agents delete the requests they used; meshcert's Deployment
	// those of the MeshTrust.
	if requests := strings.TrimSpace(e.kubectl(t, "get", "certificaterequests", "-A", "-o", "name")); requests != "" {
		t.Errorf("CertificateRequests left: %s", requests)
	}
	t.Logf("left in %s after helm uninstall (all but the leader election's Lease are the test's or approver-policy's):\n%s", systemNamespace,
		e.kubectl(t, "get", "leases,secrets,configmaps,issuers,serviceaccounts", "-n", systemNamespace, "-o", "name"))
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(0, min(i, len(s)-1))].Round(time.Millisecond)
}

// removeCgroupTrees removes name's cgroup tree in each hierarchy, deepest
// first, once its processes have exited.
func removeCgroupTrees(hierarchies []string, name string) {
	for _, h := range hierarchies {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, name), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i])
		}
	}
}

// mkdirCgroup makes the cgroup path in hierarchy h; in cpuset's, each level
// gets its parent's CPUs and memory nodes, without which it takes no
// process.
func mkdirCgroup(h, path string) error {
	dir := h
	for _, part := range strings.Split(path, "/") {
		parent := dir
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(parent, f))
			if err != nil {
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
