//go:build linux

package node_test

import (
	"context"
	"crypto/x509"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/approval"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/node"
	"github.com/meshcert/meshcert/test/node/workload/status"
)

// TestMeshcertOnRealNode installs meshcert with its chart on a real node and
// serves identities to real pods through the SPIFFE CSI driver: each gets
// exactly its own, attacks are refused, and the identities survive the
// agent's, the kubelet's and containerd's restarts and a helm upgrade.
func TestMeshcertOnRealNode(t *testing.T) {
	skipUnlessRoot(t)
	ctx := context.Background()
	e := startMeshcert(t)
	c := e.c

	web := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: workloads, Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: workloadLabels("web", nil)},
				Spec:       workloadPodSpec("web", true),
			},
		},
	}
	if err := c.Create(ctx, web); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, workloadPod(workloads, "api", "api", workloadLabels("api", nil), true)); err != nil {
		t.Fatal(err)
	}
	var webPods []string
	waitFor(t, e.n, 2*time.Minute, "the web pods", func() bool {
		pods := &corev1.PodList{}
		if c.List(ctx, pods, client.InNamespace(workloads), client.MatchingLabels{"app": "web"}) != nil || len(pods.Items) != 2 {
			return false
		}
		webPods = []string{pods.Items[0].Name, pods.Items[1].Name}
		return true
	})
	svids := e.waitSVIDs(t, workloads, append(slices.Clone(webPods), "api"), time.Time{})

	t.Run("each pod gets the SVID of its namespace and service account, chained to the issuer's root", func(t *testing.T) {
		td := spiffeid.RequireTrustDomainFromString(trustDomain)
		root := x509bundle.FromX509Authorities(td, []*x509.Certificate{e.ca.Cert})
		want := map[string]string{"api": "spiffe://" + trustDomain + "/ns/workloads/sa/api"}
		for _, p := range webPods {
			want[p] = "spiffe://" + trustDomain + "/ns/workloads/sa/web"
		}
		for pod, id := range want {
			s := svids[pod]
			t.Logf("pod %s: SPIFFE ID %s, serial %s, expires %s", pod, s.ID, s.Serial, s.NotAfter.Format(time.RFC3339))
			if s.ID != id {
				t.Errorf("pod %s holds %s, want %s", pod, s.ID, id)
			}
			chain, err := pki.DecodeX509CertificateChainBytes([]byte(s.Chain))
			if err != nil {
				t.Fatalf("pod %s: its chain: %v", pod, err)
			}
			if _, _, err := x509svid.Verify(chain, root); err != nil {
				t.Errorf("pod %s: its SVID does not chain to the issuer's root: %v", pod, err)
			}
			if served, err := pki.DecodeX509CertificateSetBytes([]byte(s.Bundle)); err != nil || !slices.ContainsFunc(served, e.ca.Cert.Equal) {
				t.Errorf("pod %s: the bundle served (%d certificates, %v) does not hold the issuer's root", pod, len(served), err)
			}
		}
		// One identity of a node, one certificate: the agent shares it.
		if svids[webPods[0]].Serial != svids[webPods[1]].Serial {
			t.Logf("the two web pods hold two certificates of one identity")
		}
		t.Logf("kubectl get pods -o wide:\n%s", e.kubectl(t, "get", "pods", "-n", workloads, "-o", "wide"))
		t.Logf("what pod api fetched, through the API server's proxy:\n$ kubectl -n %s get --raw /api/v1/namespaces/%[1]s/pods/api:8080/proxy/svid\n%s",
			workloads, e.kubectl(t, "get", "--raw", "/api/v1/namespaces/"+workloads+"/pods/api:8080/proxy/svid"))
	})

	t.Run("a host process in a cgroup named like a pod's is refused", func(t *testing.T) {
		victim := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: workloads, Name: webPods[0]}, victim); err != nil {
			t.Fatal(err)
		}
		containerID := strings.TrimPrefix(victim.Status.ContainerStatuses[0].ContainerID, "containerd://")
		// In every hierarchy, the victim's very path, under a parent that
		// is not the kubelet's.
		path := filepath.Join(node.AttackerCgroup, "kubepods", "besteffort", "pod"+string(victim.UID), containerID)
		hierarchies, err := filepath.Glob("/sys/fs/cgroup/*")
		if err != nil {
			t.Fatal(err)
		}
		var procs []string
		defer removeCgroupTrees(hierarchies, node.AttackerCgroup)
		for _, h := range hierarchies {
			if err := mkdirCgroup(h, path); err != nil {
				t.Fatal(err)
			}
			procs = append(procs, filepath.Join(h, path, "cgroup.procs"))
		}
		// The shell moves itself into every one, shows its cgroups, and
		// becomes the workload asking for an SVID.
		script := `for f in "$@"; do echo $$ > "$f" || exit 3; done; cat /proc/$$/cgroup; exec "$0" -once -addr "unix://` + e.socketDir + `/socket"`
		out, err := exec.Command("sh", append([]string{"-c", script, e.workloadBinary}, procs...)...).CombinedOutput()
		t.Logf("the attacker:\n%s", out)
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.Contains(line, ":/") && !strings.Contains(line, "/"+path) {
				t.Errorf("the attacker is not in its cgroup everywhere: %q", line)
			}
		}
		if err == nil || !strings.Contains(string(out), "PermissionDenied") {
			t.Errorf("the attacker got %v, want refused with PermissionDenied", err)
		}
	})

	t.Run("a pod that claims another namespace, and a pod with a hand-written Dataplane, are refused", func(t *testing.T) {
		started := time.Now()
		claimer := workloadPod(workloads, "claimer", "web", workloadLabels("claimer", map[string]string{kuma.NamespaceLabel: "payments"}), true)
		handmade := workloadPod(workloads, "handmade", "api", workloadLabels("handmade", nil), true)
		handmade.Annotations = map[string]string{noDataplane: "true"}
		for _, p := range []*corev1.Pod{claimer, handmade} {
			if err := c.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, e.n, time.Minute, "the handmade pod's address", func() bool {
			return c.Get(ctx, client.ObjectKeyFromObject(handmade), handmade) == nil && handmade.Status.PodIP != ""
		})
		// A Dataplane for it written by hand, claiming web's service
		// account, without the Pod as its owner.
		dp := kumaDataplane(handmade)
		dp.OwnerReferences = nil
		dp.Annotations[kuma.ServiceAccountLabel] = "web"
		if err := c.Create(ctx, dp); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"claimer", "handmade"} {
			var s status.Status
			waitFor(t, e.n, time.Minute, name+"'s refusals", func() bool {
				var err error
				s, err = e.status(workloads, name)
				return err == nil && s.StreamErrors >= 2
			})
			t.Logf("pod %s: %d refusals, the last %q", name, s.StreamErrors, s.LastError)
			if s.ID != "" || !strings.Contains(s.LastError, "PermissionDenied") {
				t.Errorf("pod %s holds %q, last error %q: want no SVID, refused", name, s.ID, s.LastError)
			}
		}
		for _, r := range e.requestsSince(started) {
			if r.dataplane == workloads+"/claimer" || r.dataplane == workloads+"/handmade" {
				t.Errorf("a request was made for %s", r.dataplane)
			}
		}
		for _, p := range []*corev1.Pod{claimer, handmade} {
			_ = c.Delete(ctx, p)
		}
	})

	var fleet []string
	t.Run("time to the first SVID of 20 pods, and to Ready of the same pods without meshcert", func(t *testing.T) {
		baselineTimes := e.startPods(t, baseline, "fleet", 20, false)
		var baselineLatency []time.Duration
		for name, created := range baselineTimes {
			var at time.Time
			waitFor(t, e.n, 2*time.Minute, "baseline pod "+name+" Ready", func() bool {
				var ok bool
				at, ok = e.readyAt(baseline, name)
				return ok
			})
			baselineLatency = append(baselineLatency, at.Sub(created))
		}
		created := e.startPods(t, workloads, "fleet", 20, true)
		for name := range created {
			fleet = append(fleet, name)
		}
		slices.Sort(fleet)
		got := e.waitSVIDs(t, workloads, fleet, time.Time{})
		var latency, ready []time.Duration
		var refusals []int
		for name, at := range created {
			latency = append(latency, got[name].FirstSVID.Sub(at))
			refusals = append(refusals, got[name].StreamErrors)
			if r, ok := e.readyAt(workloads, name); ok {
				ready = append(ready, r.Sub(at))
			}
		}
		t.Logf("creation to first SVID, 20 pods with meshcert: p50 %s, p99 %s", percentile(latency, 50), percentile(latency, 99))
		slices.Sort(refusals)
		t.Logf("the watch's failures before the first SVID, each retried after go-spiffe's backoff: %v", refusals)
		t.Logf("creation to Ready, the same pods: p50 %s, p99 %s", percentile(ready, 50), percentile(ready, 99))
		t.Logf("creation to Ready, 20 pods without meshcert (no CSI volume): p50 %s, p99 %s", percentile(baselineLatency, 50), percentile(baselineLatency, 99))
		if err := c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(baseline), client.GracePeriodSeconds(0)); err != nil {
			t.Error(err)
		}
	})
	all := append(append(slices.Clone(webPods), "api"), fleet...)

	t.Run("the agent's pod killed while 20 workloads hold streams: the DaemonSet brings it back and every workload an SVID", func(t *testing.T) {
		before := e.statuses(t, all)
		old := e.agentPod(t)
		killed := time.Now()
		if err := c.Delete(ctx, &old, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		var back corev1.Pod
		waitFor(t, e.n, 2*time.Minute, "a new agent pod Ready", func() bool {
			back = e.agentPod(t)
			return back.UID != old.UID && podReady(&back)
		})
		t.Logf("a new agent pod Ready %s after the kill", time.Since(killed).Round(time.Millisecond))
		e.waitUpdated(t, all, before, 2*time.Minute)
		t.Logf("every one of %d workloads holds a valid SVID from the new agent %s after the kill", len(all), time.Since(killed).Round(time.Millisecond))
	})

	t.Run("the kubelet and containerd restarted: the workloads keep their SVIDs, and renewals go on", func(t *testing.T) {
		before := e.statuses(t, all)
		restarted := time.Now()
		for _, daemon := range []string{"containerd", "kubelet"} {
			if err := e.n.Restart(ctx, e.cluster.Client, daemon); err != nil {
				t.Fatalf("restarting %s: %v", daemon, err)
			}
		}
		t.Logf("containerd and the kubelet back, the node Ready, %s after the restart", time.Since(restarted).Round(time.Millisecond))
		for name, s := range e.statuses(t, all) {
			if s.Started != before[name].Started || s.Lapses != 0 || !time.Now().Before(s.NotAfter) {
				t.Errorf("workload %s after the restart: started %s (was %s), %d lapses, expiring %s", name, s.Started, before[name].Started, s.Lapses, s.NotAfter)
			}
		}
		e.waitUpdated(t, all, before, 2*svidLifetime)
		t.Logf("every workload renewed %s after the restart", time.Since(restarted).Round(time.Millisecond))
	})

	t.Run("helm upgrade rolls the agent, and no workload is ever without a valid SVID", func(t *testing.T) {
		before := e.statuses(t, all)
		old := e.agentPod(t)
		done := make(chan struct{})
		lapses := make(chan string, len(all))
		go func() {
			defer close(done)
			e.watchPossession(t, all, lapses, 2*time.Minute, old.UID)
		}()
		upgraded := time.Now()
		e.helmRun(t, append([]string{"upgrade", release, localcluster.ChartDir(), "--namespace", systemNamespace, "--wait", "--timeout", "3m"},
			append(slices.Clone(e.chartArgs), "--set", "logLevel=1")...)...)
		<-done
		close(lapses)
		for l := range lapses {
			t.Error(l)
		}
		now := e.agentPod(t)
		if now.UID == old.UID || !slices.Contains(now.Spec.Containers[0].Args, "--log-level=1") {
			t.Errorf("the agent pod was not rolled: %s, args %v", now.Name, now.Spec.Containers[0].Args)
		}
		e.waitUpdated(t, all, before, 2*time.Minute)
		t.Logf("agent rolled, every workload served by the new one, %s after helm upgrade", time.Since(upgraded).Round(time.Millisecond))
	})

	t.Run("a deleted workload's identity is no longer renewed", func(t *testing.T) {
		api, err := e.status(workloads, "api")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: workloads, Name: "api"}}, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		deleted := time.Now()
		others := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "api" })
		before := e.statuses(t, others)
		// Every other workload renews within a lifetime, and api's
		// certificate passes the 4/5 of its life where it would have been.
		e.waitUpdated(t, others, before, 2*svidLifetime)
		renewAt := api.NotAfter.Add(-svidLifetime / 5)
		time.Sleep(time.Until(renewAt.Add(10 * time.Second)))
		var renewed int
		for _, r := range e.requestsSince(deleted.Add(2 * time.Second)) {
			if r.dataplane == workloads+"/api" {
				t.Errorf("a request for the deleted pod api at %s, %s after its deletion", r.created.Format(time.RFC3339), r.created.Sub(deleted))
			}
			renewed++
		}
		t.Logf("%s after api's deletion, %s past its renewal time: %d requests for the others, none for api",
			time.Since(deleted).Round(time.Second), time.Since(renewAt).Round(time.Second), renewed)
	})

	t.Run("meshcert approved the agent's requests", func(t *testing.T) {
		requests := e.requestsSince(time.Time{})
		if len(requests) < 2 {
			t.Fatalf("%d agent requests seen, want one per identity at least", len(requests))
		}
		for _, r := range requests {
			if r.node != node.Name {
				t.Errorf("request for %s from node %q", r.dataplane, r.node)
			}
			if r.approval != "Approved/"+approval.Reason {
				t.Errorf("request for %s: %q, want Approved/%s", r.dataplane, r.approval, approval.Reason)
			}
		}
		t.Logf("%d agent requests over the whole test, all approved by %s", len(requests), approval.Reason)
	})

	t.Run("helm uninstall leaves no meshcert object behind", func(t *testing.T) {
		e.helmRun(t, "uninstall", release, "--namespace", systemNamespace, "--wait")
		e.checkUninstalled(t)
	})
}
