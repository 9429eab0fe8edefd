//go:build linux

package node_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/test/node"
)

const (
	kumaSystem  = "kuma-system"
	kumaRelease = "kuma"
	kumaMesh    = "demo"
	// kumaCPHost is the host of the control plane's URL that Kuma's
	// injector gives each sidecar: its Service's name and namespace.
	kumaCPHost = "kuma-control-plane." + kumaSystem
	// spireSDSCluster is the cluster Kuma's Spire provider sends for the
	// agent's socket.
	spireSDSCluster = "system_identity_sds-spire-agent"
	// spireSocket is where Kuma's injector mounts the SPIFFE CSI volume
	// (spire.mountPath) and the socket in it (spire.socketFileName), by
	// default.
	spireSocket = "/run/spire/sockets/socket"
	// kumaTrustDomain is what Kuma's default trust domain template,
	// {{ .Mesh }}.{{ .Zone }}.mesh.local, gives in the one zone, default.
	kumaTrustDomain = kumaMesh + ".default.mesh.local"
	// appPort is the port of each workload's Service that Kuma's sidecar
	// serves inbound: the application behind it, a pause container, never
	// listens, so the stand-in Envoy takes it.
	appPort = 8080
	// nodeAddress is the node's address on the pods' bridge, from which
	// the test's own clients dial.
	nodeAddress = "10.203.0.1"
	// standInDumpPatch is the ContainerPatch that has the stand-in dump
	// what kuma-cp sends.
	standInDumpPatch = "standin-xds-dump"
)

// kumaVersion is the Kuma whose chart and binaries hack/kuma.sh gives.
const kumaVersion = "2.14.3"

// noBuiltinDNS is what the test adds to docs/kuma.md's install of Kuma: no
// builtin DNS, whose CoreDNS the kuma-dp image built here lacks and whose
// queries only the transparent proxy would send to it.
const noBuiltinDNS = "controlPlane.envVars.KUMA_RUNTIME_KUBERNETES_INJECTOR_BUILTIN_DNS_ENABLED=false"

// kumaChartArgs are docs/kuma.md's values for Kuma's chart, with
// noBuiltinDNS: the test renders the chart with them to learn the names of
// the images it builds.
var kumaChartArgs = []string{
	"--set", "noHelmHooks=true",
	"--set", "controlPlane.envVars.KUMA_RUNTIME_KUBERNETES_INJECTOR_SPIRE_ENABLED=true",
	"--set", noBuiltinDNS,
}

// kumaMeshManifest is examples/kuma/mesh.yaml, which docs/kuma.md applies,
// with what the test adds: a short lifetime, and its ContainerPatch.
var kumaMeshManifest = fmt.Sprintf(`apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: %[1]s
spec:
  meshServices:
    mode: Exclusive
---
apiVersion: kuma.io/v1alpha1
kind: MeshIdentity
metadata:
  name: %[1]s-meshcert
  namespace: %[2]s
  labels:
    kuma.io/mesh: %[1]s
  annotations:
    meshcert.io/issuer-name: %[3]s
    # Short-lived, so that renewals, and a rotation's retirement of the
    # old root, happen while the test watches.
    meshcert.io/duration: %[5]s
spec:
  selector:
    dataplane:
      matchLabels: {}
  provider:
    type: Spire
    spire: {}
---
# Kuma's ContainerPatch, which the pods name: the stand-in Envoy dumps what
# kuma-cp sends it into the sidecar's /tmp volume, where the test reads it.
apiVersion: kuma.io/v1alpha1
kind: ContainerPatch
metadata:
  name: %[4]s
  namespace: %[2]s
spec:
  sidecarPatch:
  - op: add
    path: /env/-
    value: '{"name": "MESHCERT_ENVOY_DUMP_DIR", "value": "/tmp"}'
`, kumaMesh, kumaSystem, issuer, standInDumpPatch, svidLifetime)

// TestKumaOnRealNode installs Kuma with its own chart and meshcert with its
// agent on a real node, and runs two Deployments in a mesh whose
// MeshIdentity is of type Spire: Kuma's control plane makes their
// Dataplanes and tells each sidecar which socket and secrets to ask for;
// kuma-dp runs the tests' stand-in Envoy, which asks exactly those of
// meshcert's agent and completes mutual TLS with the other workload.
func TestKumaOnRealNode(t *testing.T) {
	skipUnlessRoot(t)
	ctx := context.Background()
	dir := kumaDir(t)
	started := time.Now()
	e := startMeshcertWith(t, meshcertOptions{meshSystem: kumaSystem, kuma: func(t *testing.T, e *meshcertEnv) {
		installKuma(t, e, dir)
	}})
	t.Logf("Kuma and meshcert installed %s after the start", time.Since(started).Round(time.Millisecond))
	c := e.c

	// docs/kuma.md's mesh and namespace; then the test's own lifetime for
	// the identities, and the ContainerPatch its pods name.
	e.runWalkthrough(t, walkthroughPart(t, "kuma", 3), nil)
	if _, stderr, err := e.cluster.Kubectl(ctx, []byte(kumaMeshManifest), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply of the test's mesh: %v\n%s", err, stderr)
	}
	cpService := &corev1.Service{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: kumaSystem, Name: "kuma-control-plane"}, cpService); err != nil {
		t.Fatal(err)
	}
	apps := []string{"web", "backend"}
	for _, app := range apps {
		for _, obj := range kumaWorkload(app, cpService.Spec.ClusterIP) {
			// startMeshcert made some of the ServiceAccounts.
			if err := c.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}

	defer func() {
		if t.Failed() {
			e.logKuma(t)
		}
	}()
	pods := map[string]corev1.Pod{}
	waitFor(t, e.n, 3*time.Minute, "both workloads' pods Ready with Kuma's sidecar", func() bool {
		for _, app := range apps {
			list := &corev1.PodList{}
			if c.List(ctx, list, client.InNamespace(workloads), client.MatchingLabels{"app": app}) != nil || len(list.Items) != 1 || !podReady(&list.Items[0]) {
				return false
			}
			pods[app] = list.Items[0]
		}
		return true
	})
	t.Logf("both pods Ready %s after the start; kubectl get pods -o wide:\n%s", time.Since(started).Round(time.Millisecond),
		e.kubectl(t, "get", "pods", "-n", workloads, "-o", "wide"))
	for app, pod := range pods {
		var names []string
		for _, ct := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
			names = append(names, ct.Name+"="+ct.Image)
		}
		t.Logf("pod %s (%s), as Kuma's injector made it: containers %v", pod.Name, app, names)
	}

	api := kumaAPI(t, e)
	want := map[string]string{}
	t.Run("Kuma makes the Dataplanes and marks the MeshIdentity Ready", func(t *testing.T) {
		for app, pod := range pods {
			dp := &kuma.DataplaneResource{}
			waitFor(t, e.n, time.Minute, "the Dataplane of "+pod.Name, func() bool {
				return c.Get(ctx, client.ObjectKeyFromObject(&pod), dp) == nil
			})
			owner := metav1.GetControllerOf(dp)
			if owner == nil || owner.Kind != "Pod" || owner.UID != pod.UID || dp.Mesh != kumaMesh {
				t.Errorf("Dataplane %s: controller %+v, mesh %q; want the Pod %s of mesh %s", dp.Name, owner, dp.Mesh, pod.UID, kumaMesh)
			}
			want[app] = "spiffe://" + kumaTrustDomain + "/ns/" + workloads + "/sa/" + app
		}
		var conditions string
		waitFor(t, e.n, time.Minute, "the MeshIdentity Ready", func() bool {
			conditions = e.kubectl(t, "get", "meshidentity", "-n", kumaSystem, kumaMesh+"-meshcert", "-o", `jsonpath={.status.conditions}`)
			return meshIdentityReady(conditions)
		})
		t.Logf("MeshIdentity %s-meshcert status.conditions: %s", kumaMesh, conditions)
		mid := &kuma.MeshIdentityResource{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: kumaSystem, Name: kumaMesh + "-meshcert"}, mid); err != nil {
			t.Fatal(err)
		}
		delete(mid.Annotations, corev1.LastAppliedConfigAnnotation)
		t.Logf("MeshIdentity %s as Kuma's admission and meshcert's left it: labels %v, annotations %v", mid.Name, mid.Labels, mid.Annotations)
		t.Logf("kumactl inspect dataplanes --mesh %s:\n%s", kumaMesh, api.kumactl(t, "inspect", "dataplanes", "--mesh", kumaMesh))
		t.Logf("kubectl get dataplanes,meshservices -n %s:\n%s", workloads, e.kubectl(t, "get", "dataplanes,meshservices", "-n", workloads))
	})

	events := map[string][]map[string]any{}
	t.Run("each sidecar asks the socket and secrets kuma-cp configured, and gets the identity Kuma reports", func(t *testing.T) {
		for app, pod := range pods {
			dpName := pod.Name + "." + workloads
			layout := api.get(t, "/meshes/"+kumaMesh+"/dataplanes/"+dpName+"/_layout")
			reported, _ := layout["spiffeId"].(string)
			t.Logf("%s: Kuma reports SPIFFE ID %q (GET /meshes/%s/dataplanes/%s/_layout)", app, reported, kumaMesh, dpName)
			if reported != want[app] {
				t.Errorf("%s: Kuma reports %q, want %q", app, reported, want[app])
			}
			// What kuma-cp sent this sidecar, as the stand-in dumped it.
			var sent map[string]any
			waitFor(t, e.n, 2*time.Minute, app+"'s clusters with "+spireSDSCluster, func() bool {
				sent = sentToSidecar(t, pod)
				return len(findObjects(sent["Cluster"], func(m map[string]any) bool { return m["name"] == spireSDSCluster })) > 0
			})
			sds := findObjects(sent["Cluster"], func(m map[string]any) bool { return m["name"] == spireSDSCluster })
			raw, _ := json.Marshal(sds[0])
			t.Logf("%s: the SDS cluster kuma-cp sent: %s", app, raw)
			configuredSocket := ""
			for _, p := range findObjects(sds[0], func(m map[string]any) bool { _, ok := m["pipe"]; return ok }) {
				configuredSocket, _ = p["pipe"].(map[string]any)["path"].(string)
			}
			var configured []string
			for _, ref := range findObjects(sent, func(m map[string]any) bool { return m["sdsConfig"] != nil && m["name"] != nil }) {
				if name := ref["name"].(string); !slices.Contains(configured, name) {
					configured = append(configured, name)
				}
			}
			slices.Sort(configured)
			t.Logf("%s: the SDS secret names in the clusters and listeners kuma-cp sent: %q, on socket %q", app, configured, configuredSocket)
			if configuredSocket != spireSocket || !sameStrings(configured, []string{want[app], agent.AllBundlesName}) {
				t.Errorf("%s: kuma-cp configured %q on %q, want %q on %q", app, configured, configuredSocket, []string{want[app], agent.AllBundlesName}, spireSocket)
			}

			var evs []map[string]any
			waitFor(t, e.n, 2*time.Minute, app+"'s stand-in to hold its identity", func() bool {
				evs = standInEvents(t, e, pod.Name)
				return len(eventsWith(evs, "sds secret", "kind", "tls_certificate")) > 0
			})
			events[app] = evs
			var asked []string
			for _, ev := range eventsWith(evs, "sds request", "", nil) {
				if ev["socket"] != configuredSocket || ev["sdsCluster"] != spireSDSCluster {
					t.Errorf("%s asked %v of socket %v through %v, not of %s through %s", app, ev["name"], ev["socket"], ev["sdsCluster"], configuredSocket, spireSDSCluster)
				}
				if name, _ := ev["name"].(string); !slices.Contains(asked, name) {
					asked = append(asked, name)
				}
			}
			slices.Sort(asked)
			t.Logf("%s: the stand-in asked the agent for %q on %q", app, asked, configuredSocket)
			if !slices.Equal(asked, configured) {
				t.Errorf("%s: the stand-in asked for %q, kuma-cp configured %q", app, asked, configured)
			}
			for _, ev := range eventsWith(evs, "sds secret", "kind", "tls_certificate") {
				t.Logf("%s: SVID %v, serial %v, not after %v, chain of %v", app, ev["uris"], ev["serial"], ev["notAfter"], ev["chainLength"])
				if uris, _ := ev["uris"].([]any); len(uris) != 1 || uris[0] != reported {
					t.Errorf("%s: the SVID's URIs %v, want only %q, the identity Kuma reports", app, ev["uris"], reported)
				}
			}
			for _, ev := range eventsWith(evs, "sds secret", "kind", "validation_context") {
				t.Logf("%s: %s holds trust domains %v", app, ev["name"], ev["trustDomains"])
			}
		}
	})

	t.Run("the two workloads complete mutual TLS through their sidecars", func(t *testing.T) {
		peers := map[string]string{"web": "backend", "backend": "web"}
		for app, peer := range peers {
			var out, in map[string]any
			waitFor(t, e.n, time.Minute, app+"'s handshakes with "+peer, func() bool {
				events[app] = standInEvents(t, e, pods[app].Name)
				events[peer] = standInEvents(t, e, pods[peer].Name)
				out = lastHandshake(events[app], "outbound handshake", want[peer])
				in = lastHandshake(events[peer], "inbound handshake", want[app])
				return out != nil && in != nil
			})
			t.Logf("%s -> %s: outbound %v (cluster %v, endpoint %v, peer %v, answered by %v); %s's inbound %v (listener %v, peer %v)",
				app, peer, out["result"], out["cluster"], out["endpoint"], out["peerSpiffeId"], out["peerNode"], peer, in["result"], in["listener"], in["peerSpiffeId"])
		}
		for app, evs := range events {
			var ok int
			failed := map[string][]string{}
			for _, kind := range []string{"outbound handshake", "inbound handshake"} {
				ok += len(eventsWith(evs, kind, "ok", true))
				for _, ev := range eventsWith(evs, kind, "ok", false) {
					reason := fmt.Sprintf("%s %v: %v", kind, ev["peerSpiffeId"], ev["result"])
					failed[reason] = append(failed[reason], fmt.Sprint(ev["ts"]))
				}
			}
			t.Logf("%s's stand-in so far: %d handshakes completed, and these failed:", app, ok)
			for reason, at := range failed {
				t.Logf("  %d× from %s to %s: %s", len(at), at[0], at[len(at)-1], reason)
			}
		}
	})

	t.Run("backend's sidecar refuses a client of another mesh, one with a foreign certificate for web's SPIFFE ID, and one with none", func(t *testing.T) {
		foreign := testpki.NewCA(t, "foreign root", time.Now())
		key := testpki.Key(t)
		block, _ := pem.Decode(foreign.Issue(t, key, testpki.URLs(want["web"]), time.Now().Add(-time.Minute), time.Hour))
		// The same issuer signs for another mesh, whose trust domain is not
		// the mesh's: Kuma's default template, with mesh "other".
		otherMesh := strings.Replace(want["web"], "spiffe://"+kumaMesh+".", "spiffe://other.", 1)
		otherKey := testpki.Key(t)
		otherBlock, _ := pem.Decode(e.ca.Issue(t, otherKey, testpki.URLs(otherMesh), time.Now().Add(-time.Minute), time.Hour))
		clients := map[string][]tls.Certificate{
			"a certificate of another mesh, from the same issuer": {{Certificate: [][]byte{otherBlock.Bytes}, PrivateKey: otherKey}},
			"a foreign certificate":                               {{Certificate: [][]byte{block.Bytes}, PrivateKey: key}},
			"no certificate":                                      nil,
		}
		for name, certs := range clients {
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(pods["backend"].Status.PodIP, fmt.Sprint(appPort)),
				&tls.Config{Certificates: certs, InsecureSkipVerify: true}) // the client's own check is not what is tested
			if err != nil {
				t.Logf("client with %s: refused at its handshake: %v", name, err)
				continue
			}
			local := conn.LocalAddr().String()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			answer, readErr := io.ReadAll(conn)
			conn.Close()
			if readErr == nil {
				t.Errorf("client with %s: backend's sidecar answered %q", name, answer)
			}
			var refused map[string]any
			waitFor(t, e.n, 30*time.Second, "backend's stand-in to log the client with "+name, func() bool {
				for _, ev := range eventsWith(standInEvents(t, e, pods["backend"].Name), "inbound handshake", "remote", local) {
					refused = ev
				}
				return refused != nil
			})
			t.Logf("client with %s: it read %v; backend's sidecar: ok %v, peer %q, %v", name, readErr, refused["ok"], refused["peerSpiffeId"], refused["result"])
			if refused["ok"] != false {
				t.Errorf("client with %s: backend's sidecar completed the handshake", name)
			}
		}
	})

	t.Run("a CA rotation under traffic: new issuer, both roots trusted, switch, old root retired, and no handshake fails", func(t *testing.T) {
		const newIssuer = issuer + "-2"
		ca2, err := testpki.New("meshcert node test root 2", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived))
		if err != nil {
			t.Fatal(err)
		}
		if err := localcluster.CreateCAIssuers(ctx, c, []localcluster.CAIssuer{{
			Name: newIssuer, Namespace: kumaSystem, SecretName: newIssuer, SecretNamespace: kumaSystem, CA: ca2,
		}}); err != nil {
			t.Fatal(err)
		}
		// approver-policy approves meshcert's own requests (the MeshTrust's
		// probe) for the issuers the chart names.
		e.chartArgs = append(e.chartArgs, "--set", "approverPolicy.issuers[1].name="+newIssuer)
		e.helmRun(t, append([]string{"upgrade", release, localcluster.ChartDir(), "--namespace", systemNamespace, "--wait", "--timeout", "3m"}, e.chartArgs...)...)

		before := map[string]int{}
		for _, app := range apps {
			before[app] = len(failedHandshakes(standInEvents(t, e, pods[app].Name)))
		}
		rotated := time.Now()
		if _, stderr, err := e.cluster.Kubectl(ctx, nil, "annotate", "--overwrite", "-n", kumaSystem, "meshidentity", kumaMesh+"-meshcert", "meshcert.io/issuer-name="+newIssuer); err != nil {
			t.Fatalf("switching the issuer: %v: %s", err, stderr)
		}
		trusted := func(want ...*x509.Certificate) func() bool {
			return func() bool {
				mt := &kuma.MeshTrustResource{}
				if c.Get(ctx, client.ObjectKey{Namespace: kumaSystem, Name: kumaMesh + "-meshcert"}, mt) != nil {
					return false
				}
				roots := mt.Roots()
				return len(roots) == len(want) && !slices.ContainsFunc(want, func(w *x509.Certificate) bool { return !slices.ContainsFunc(roots, w.Equal) })
			}
		}
		waitFor(t, e.n, time.Minute, "the MeshTrust to hold both roots", trusted(e.ca.Cert, ca2.Cert))
		t.Logf("both roots trusted %s after the switch", time.Since(rotated).Round(time.Millisecond))
		for _, app := range apps {
			waitFor(t, e.n, 2*time.Minute, app+"'s sidecar to hold an SVID of the new issuer", func() bool {
				certs := eventsWith(standInEvents(t, e, pods[app].Name), "sds secret", "kind", "tls_certificate")
				return len(certs) > 0 && certs[len(certs)-1]["issuer"] == ca2.Cert.Subject.CommonName
			})
			t.Logf("%s's sidecar holds an SVID of %s %s after the switch", app, newIssuer, time.Since(rotated).Round(time.Millisecond))
		}
		waitFor(t, e.n, 3*time.Minute, "the old root retired", trusted(ca2.Cert))
		t.Logf("the old root retired from the MeshTrust %s after the switch", time.Since(rotated).Round(time.Millisecond))
		// Traffic goes on after the old root left: a handshake each way
		// more than there were, after the agent has pushed every sidecar
		// the ALL without it, which it does within moments of the change.
		time.Sleep(5 * time.Second)
		for app, peer := range map[string]string{"web": "backend", "backend": "web"} {
			seen := len(eventsWith(standInEvents(t, e, pods[app].Name), "outbound handshake", "ok", true))
			waitFor(t, e.n, time.Minute, app+"'s handshakes with "+peer+" after the retirement", func() bool {
				return len(eventsWith(standInEvents(t, e, pods[app].Name), "outbound handshake", "ok", true)) > seen
			})
		}
		for _, app := range apps {
			evs := standInEvents(t, e, pods[app].Name)
			failed := failedHandshakes(evs)[before[app]:]
			var ok int
			for _, kind := range []string{"outbound handshake", "inbound handshake"} {
				ok += len(eventsWith(evs, kind, "ok", true))
			}
			var certs []string
			for _, ev := range eventsWith(evs, "sds secret", "kind", "tls_certificate") {
				certs = append(certs, fmt.Sprintf("%v by %v", ev["ts"], ev["issuer"]))
			}
			t.Logf("%s: %d handshakes completed over the whole test, %d failed since the switch %s ago; SVIDs received: %v", app, ok, len(failed), time.Since(rotated).Round(time.Second), certs)
			for _, ev := range failed {
				t.Errorf("%s: a handshake failed during the rotation: %v", app, ev)
			}
		}
	})

	t.Run("meshcert's MeshTrust is admitted by Kuma and keeps Kuma's labels", func(t *testing.T) {
		list := &kuma.MeshTrustResourceList{}
		waitFor(t, e.n, time.Minute, "meshcert's MeshTrust", func() bool {
			return c.List(ctx, list, client.InNamespace(kumaSystem)) == nil && len(list.Items) > 0
		})
		for _, mt := range list.Items {
			t.Logf("MeshTrust %s: labels %v, trust domain %s", mt.Name, mt.Labels, mt.Spec.TrustDomain)
			if mt.Spec.TrustDomain != kumaTrustDomain {
				t.Errorf("MeshTrust %s for %q, want %q", mt.Name, mt.Spec.TrustDomain, kumaTrustDomain)
			}
		}
	})
}

// logKuma logs the ends of the sidecars' logs, of their last runs too, and
// of kuma-cp's.
func (e *meshcertEnv) logKuma(t *testing.T) {
	t.Helper()
	list := &corev1.PodList{}
	if err := e.c.List(context.Background(), list, client.InNamespace(workloads)); err != nil {
		t.Log(err)
	}
	for _, pod := range list.Items {
		for _, previous := range []string{"--previous=true", "--previous=false"} {
			t.Logf("kubectl logs %s -c kuma-sidecar %s:\n%s", pod.Name, previous,
				e.kubectl(t, "logs", "-n", workloads, pod.Name, "-c", "kuma-sidecar", previous, "--tail", "40"))
		}
	}
	t.Logf("kuma-cp's log:\n%s", e.kubectl(t, "logs", "-n", kumaSystem, "deployment/kuma-control-plane", "--tail", "60"))
}

// kumaDir is the folder of Kuma's binaries and chart that hack/kuma.sh
// finds ($KUMA_DIR, ../shared/kuma beside the repository, its cache, or
// Kuma's release).
func kumaDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("../../hack/kuma.sh")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("no Kuma: %v; set KUMA_DIR to Kuma's unpacked release", err)
	}
	return strings.TrimSpace(string(out))
}

// installKuma installs Kuma with its chart as a user does, with images built
// here from Kuma's binaries under the names the chart renders: kuma-cp;
// kuma-dp with the tests' stand-in Envoy as envoy; and kuma-init with a
// stand-in for kumactl, as the node runs no transparent proxy.
func installKuma(t *testing.T, e *meshcertEnv, dir string) {
	t.Helper()
	ctx := context.Background()
	chart := filepath.Join(dir, "chart")
	// docs/kuma.md: the system namespace, which the chart without its
	// hooks asks for, and which its rendering reads.
	e.runWalkthrough(t, walkthroughPart(t, "kuma", 0), nil)
	bins := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, pkg := range []string{"github.com/meshcert/meshcert/test/kuma/envoy", "github.com/meshcert/meshcert/test/kuma/kumainit"} {
		wg.Go(func() { errs[i] = node.BuildStatic(ctx, pkg, filepath.Join(bins, filepath.Base(pkg))) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	cp, dp, init := kumaImageNames(t, e, chart)
	t.Logf("Kuma's chart names the images %s, %s and %s", cp, dp, init)
	for _, img := range []node.Image{
		// As Kuma's Dockerfiles: distroless, each program in /usr/bin.
		{Tag: cp, Binary: filepath.Join(dir, "kuma-cp"), Path: "/usr/bin/kuma-cp", User: "65532:65532"},
		{Tag: dp, Binary: filepath.Join(dir, "kuma-dp"), Path: "/usr/bin/kuma-dp",
			Others: map[string]string{"/usr/bin/envoy": filepath.Join(bins, "envoy")}},
		{Tag: init, Binary: filepath.Join(bins, "kumainit"), Path: "/usr/bin/kumactl"},
	} {
		if err := e.n.LoadImage(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	// docs/kuma.md's install of Kuma, from the chart here rather than Kuma's
	// repository, and without the builtin DNS.
	started := time.Now()
	e.runWalkthrough(t, walkthroughPart(t, "kuma", 1), func(command string) string {
		const fromRepository, version = " kuma/kuma ", " --version " + kumaVersion
		if !strings.HasPrefix(command, "helm install kuma ") {
			return command
		}
		if !strings.Contains(command, fromRepository) || !strings.Contains(command, version) {
			t.Fatalf("docs/kuma.md installs Kuma otherwise than from%sat%s: %s", fromRepository, version, command)
		}
		command = strings.Replace(command, fromRepository, " "+chart+" ", 1)
		command = strings.Replace(command, version, "", 1)
		return command + " --timeout 5m --set " + noBuiltinDNS
	})
	t.Logf("Kuma installed by docs/kuma.md's commands, Ready in %s", time.Since(started).Round(time.Millisecond))
}

// kumaImageNames are the images of kuma-cp, of the sidecar and of its init
// container, as Kuma's chart renders them with the test's values.
func kumaImageNames(t *testing.T, e *meshcertEnv, chart string) (cp, dp, init string) {
	t.Helper()
	out := e.helmRun(t, append([]string{"template", kumaRelease, chart, "--namespace", kumaSystem, "--dry-run=server",
		"--show-only", "templates/cp-deployment.yaml"}, kumaChartArgs...)...)
	d := &appsv1.Deployment{}
	if err := yaml.Unmarshal([]byte(out), d); err != nil {
		t.Fatalf("Kuma's control plane Deployment: %v\n%s", err, out)
	}
	container := d.Spec.Template.Spec.Containers[0]
	cp = container.Image
	for _, env := range container.Env {
		switch env.Name {
		case "KUMA_RUNTIME_KUBERNETES_INJECTOR_SIDECAR_CONTAINER_IMAGE":
			dp = env.Value
		case "KUMA_INJECTOR_INIT_CONTAINER_IMAGE":
			init = env.Value
		}
	}
	if cp == "" || dp == "" || init == "" {
		t.Fatalf("Kuma's chart names no images of kuma-cp %q, kuma-dp %q, kuma-init %q", cp, dp, init)
	}
	return cp, dp, init
}

// kumaWorkload is an application as a user deploys it into the mesh: a
// ServiceAccount, a Service and a Deployment whose pods ask for Kuma's Spire
// support. The pods map the control plane's host to its Service's address:
// the node has no cluster DNS, and the sidecar dials the control plane by
// that name.
func kumaWorkload(app, cpAddress string) []client.Object {
	labels := map[string]string{"app": app}
	return []client.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: workloads, Name: app}},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: workloads, Name: app},
			Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{
				Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(appPort), AppProtocol: ptr.To("tcp"),
			}}},
		},
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: workloads, Name: app},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To[int32](1),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{
						"k8s.kuma.io/spire-support": "true",
						"kuma.io/container-patches": standInDumpPatch,
					}},
					Spec: corev1.PodSpec{
						ServiceAccountName:            app,
						TerminationGracePeriodSeconds: ptr.To[int64](1),
						HostAliases:                   []corev1.HostAlias{{IP: cpAddress, Hostnames: []string{kumaCPHost}}},
						Containers: []corev1.Container{{
							Name: "app", Image: node.PauseImage, ImagePullPolicy: corev1.PullNever,
							Ports: []corev1.ContainerPort{{ContainerPort: appPort}},
						}},
					},
				},
			},
		},
	}
}

// meshIdentityReady tells whether a MeshIdentity's status.conditions say
// Ready.
func meshIdentityReady(conditions string) bool {
	var conds []metav1.Condition
	if json.Unmarshal([]byte(conditions), &conds) != nil {
		return false
	}
	return slices.ContainsFunc(conds, func(c metav1.Condition) bool { return c.Type == "Ready" && c.Status == metav1.ConditionTrue })
}

// kumaAPIClient reads Kuma's API server, on the control plane pod's
// address, and runs kumactl against it.
type kumaAPIClient struct {
	url     string
	kumactl func(t *testing.T, args ...string) string
}

func kumaAPI(t *testing.T, e *meshcertEnv) *kumaAPIClient {
	t.Helper()
	list := &corev1.PodList{}
	if err := e.c.List(context.Background(), list, client.InNamespace(kumaSystem), client.MatchingLabels{"app": "kuma-control-plane"}); err != nil || len(list.Items) != 1 {
		t.Fatalf("Kuma's control plane pod: %v, %d pods", err, len(list.Items))
	}
	url := "http://" + list.Items[0].Status.PodIP + ":5681"
	config := filepath.Join(t.TempDir(), "kumactl.yaml")
	kumactl := filepath.Join(kumaDir(t), "kumactl")
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := exec.Command(kumactl, append(args, "--config-file", config)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kumactl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(t, "config", "control-planes", "add", "--name", "node", "--address", url)
	return &kumaAPIClient{url: url, kumactl: run}
}

// get reads a JSON object of Kuma's API.
func (a *kumaAPIClient) get(t *testing.T, path string) map[string]any {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(a.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", path, resp.Status, body)
	}
	out := map[string]any{}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
	return out
}

// findObjects returns every JSON object within v for which match holds.
func findObjects(v any, match func(map[string]any) bool) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if match(v) {
			found = append(found, v)
		}
		for _, child := range v {
			found = append(found, findObjects(child, match)...)
		}
	case []any:
		for _, child := range v {
			found = append(found, findObjects(child, match)...)
		}
	}
	return found
}

// sentToSidecar reads the last Cluster and Listener responses kuma-cp sent
// a pod's sidecar, as the stand-in dumped them into the sidecar's /tmp
// volume, by their type's short name, as JSON.
func sentToSidecar(t *testing.T, pod corev1.Pod) map[string]any {
	t.Helper()
	dir := filepath.Join("/var/lib/kubelet/pods", string(pod.UID), "volumes/kubernetes.io~empty-dir/kuma-sidecar-tmp")
	sent := map[string]any{}
	for _, kind := range []string{"Cluster", "Listener"} {
		// <node id>-<sequence>-<type>.json, the sequence of three digits.
		paths, err := filepath.Glob(filepath.Join(dir, "*-"+kind+".json"))
		if err != nil || len(paths) == 0 {
			continue
		}
		slices.Sort(paths)
		raw, err := os.ReadFile(paths[len(paths)-1])
		if err != nil {
			t.Fatal(err)
		}
		var resp any
		if err := json.Unmarshal(raw, &resp); err != nil {
			t.Fatalf("%s: %v", paths[len(paths)-1], err)
		}
		sent[kind] = resp
	}
	return sent
}

// standInEvents are the JSON lines the stand-in Envoy logged in a pod's
// sidecar, among kuma-dp's own.
func standInEvents(t *testing.T, e *meshcertEnv, pod string) []map[string]any {
	t.Helper()
	out, _, err := e.cluster.Kubectl(context.Background(), nil, "logs", "-n", workloads, pod, "-c", "kuma-sidecar")
	if err != nil {
		return nil
	}
	var events []map[string]any
	lines := bufio.NewScanner(strings.NewReader(out))
	lines.Buffer(nil, 1<<20)
	for lines.Scan() {
		ev := map[string]any{}
		if json.Unmarshal(lines.Bytes(), &ev) == nil && ev["logger"] == "envoy" {
			events = append(events, ev)
		}
	}
	return events
}

// eventsWith are the events of msg whose key holds value; any, with no key.
func eventsWith(events []map[string]any, msg, key string, value any) []map[string]any {
	var out []map[string]any
	for _, ev := range events {
		if ev["msg"] == msg && (key == "" || ev[key] == value) {
			out = append(out, ev)
		}
	}
	return out
}

// failedHandshakes are the failed handshakes among events, in order, but
// those of the test's own clients from the node.
func failedHandshakes(events []map[string]any) []map[string]any {
	var out []map[string]any
	for _, ev := range events {
		remote, _ := ev["remote"].(string)
		if strings.HasSuffix(fmt.Sprint(ev["msg"]), " handshake") && ev["ok"] == false && !strings.HasPrefix(remote, nodeAddress+":") {
			out = append(out, ev)
		}
	}
	return out
}

// lastHandshake is the last successful handshake of kind with peer, or nil.
func lastHandshake(events []map[string]any, kind, peer string) map[string]any {
	var last map[string]any
	for _, ev := range eventsWith(events, kind, "ok", true) {
		if ev["peerSpiffeId"] == peer {
			last = ev
		}
	}
	return last
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
