//go:build linux

package node_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/node"
)

// TestPodOnRealNode starts a real node against the test cluster, runs a pod
// on it, and checks that its process sits in the cgroup the agent's
// kubernetes attestor expects of a container.
func TestPodOnRealNode(t *testing.T) {
	ctx := context.Background()
	started := time.Now()
	n, cluster := startNode(t)
	t.Logf("node Ready %s after the start", time.Since(started).Round(time.Millisecond))

	const namespace = "node-test"
	c := cluster.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		t.Fatal(err)
	}
	// The ServiceAccount admission refuses pods until the controller
	// manager has made the namespace's default ServiceAccount.
	waitFor(t, n, time.Minute, "the default ServiceAccount", func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "default"}, &corev1.ServiceAccount{}) == nil
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "pause"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "pause", Image: node.PauseImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	waitFor(t, n, 2*time.Minute, "the pod to be Ready", func() bool {
		return c.Get(ctx, client.ObjectKeyFromObject(pod), pod) == nil && podReady(pod)
	})
	t.Logf("pod Ready %s after the start", time.Since(started).Round(time.Millisecond))

	_, pods, _ := net.ParseCIDR("10.203.0.0/24")
	if ip := net.ParseIP(pod.Status.PodIP); !pods.Contains(ip) {
		t.Errorf("pod IP %q, want one in the bridge's %s", pod.Status.PodIP, pods)
	}
	if len(pod.Status.ContainerStatuses) != 1 {
		t.Fatalf("container statuses: %+v", pod.Status.ContainerStatuses)
	}
	containerID := strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	pid, err := processInCgroupOf(containerID)
	if err != nil {
		t.Fatal(err)
	}
	// A pod without resources is BestEffort.
	want := regexp.MustCompile(`^/kubepods/besteffort/pod` + regexp.QuoteMeta(string(pod.UID)) + `/` + regexp.QuoteMeta(containerID) + `$`)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(containerID) {
		t.Errorf("container ID %q, want 64 hex digits", containerID)
	}
	lines, err := cgroupPaths(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 {
		t.Errorf("/proc/%d/cgroup is empty", pid)
	}
	for _, l := range lines {
		if !want.MatchString(l) {
			t.Errorf("/proc/%d/cgroup has %q, want every line to match %s", pid, l, want)
		}
	}
	own, err := cgroupPaths(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range own {
		if strings.Contains(l, "kubepods") {
			t.Errorf("the test's own process is in %q", l)
		}
	}
}

// TestChartAgentOnRealNode installs the chart with its node agent and the
// image built as the Dockerfile builds it, and checks that the agent serves
// its socket on the node: its readiness needs its caches synced, so it also
// reached the API server through the kubernetes Service.
func TestChartAgentOnRealNode(t *testing.T) {
	skipUnlessRoot(t)
	helm := os.Getenv("HELM")
	if helm == "" {
		t.Fatal("HELM is not set: export HELM=$(hack/cluster-bins.sh helm)")
	}
	ctx := context.Background()
	started := time.Now()
	n, cluster := startNode(t)
	if err := cluster.InstallCRDs(); err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(t.TempDir(), "meshcert")
	if err := node.BuildStatic(ctx, "github.com/meshcert/meshcert/cmd/meshcert", binary); err != nil {
		t.Fatal(err)
	}
	const tag = "meshcert.test/meshcert:test"
	if err := n.LoadImage(ctx, node.Image{Tag: tag, Binary: binary, Path: "/meshcert", User: "65532:65532"}); err != nil {
		t.Fatal(err)
	}
	socketDir := filepath.Join(n.Dir(), "agent-sockets")
	const namespace = "meshcert-system"
	out, err := exec.CommandContext(ctx, helm, "install", "meshcert", "../../charts/meshcert",
		"--kubeconfig", cluster.Kubeconfig, "--namespace", namespace, "--create-namespace",
		"--set", "agent.enabled=true", "--set", "agent.socketDir="+socketDir,
		"--set", "image.repository=meshcert.test/meshcert", "--set", "image.tag=test", "--set", "image.pullPolicy=Never",
		"--set", "replicaCount=1").CombinedOutput()
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	c := cluster.Client
	var agent corev1.Pod
	waitFor(t, n, 2*time.Minute, "the agent pod to be Ready", func() bool {
		pods := &corev1.PodList{}
		if err := c.List(ctx, pods, client.InNamespace(namespace), client.MatchingLabels{"app.kubernetes.io/component": "agent"}); err != nil || len(pods.Items) != 1 {
			return false
		}
		agent = pods.Items[0]
		return podReady(&agent)
	})
	t.Logf("agent Ready %s after the start", time.Since(started).Round(time.Millisecond))
	if agent.Spec.NodeName != node.Name || agent.Spec.Containers[0].Image != tag {
		t.Errorf("agent pod on node %q with image %q", agent.Spec.NodeName, agent.Spec.Containers[0].Image)
	}
	// The agent's controllers start their workers once their caches have
	// synced, which they did through the kubernetes Service; reading its log
	// goes through the kubelet, as the API server's client.
	var logs, stderr string
	var logsErr error
	defer func() {
		if t.Failed() {
			t.Logf("kubectl logs of the agent: %v %s\n%s", logsErr, stderr, logs)
		}
	}()
	waitFor(t, n, time.Minute, "the agent's controllers to start", func() bool {
		logs, stderr, logsErr = cluster.Kubectl(ctx, nil, "logs", "--namespace", namespace, agent.Name)
		return logsErr == nil && strings.Contains(logs, "Starting workers")
	})
	info, err := os.Stat(filepath.Join(socketDir, "socket"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s/socket is %v, want a socket", socketDir, info.Mode())
	}
}

// startNode starts a test cluster and a node joined to it, and stops both
// when the test ends.
func startNode(t *testing.T) (*node.Node, *localcluster.Cluster) {
	t.Helper()
	skipUnlessRoot(t)
	n, err := node.New()
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := localcluster.Start(n.ClusterOptions(localcluster.Options{}))
	if err != nil {
		t.Fatal(err, n.Stop())
	}
	t.Cleanup(func() {
		if err := cluster.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stopping the node: %v", err)
		}
	})
	if err := n.Start(context.Background(), cluster); err != nil {
		t.Fatalf("%v\nthe kubelet's log:\n%s", err, n.Log("kubelet", 40))
	}
	return n, cluster
}

func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a real node needs root")
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// waitFor polls done every 200ms until timeout, and fails with the node's
// logs.
func waitFor(t *testing.T, n *node.Node, timeout time.Duration, what string, done func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !done(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\nthe kubelet's log:\n%s\ncontainerd's:\n%s", what, n.Log("kubelet", 40), n.Log("containerd", 20))
		}
	}
}

// processInCgroupOf finds a process whose cgroup names the container.
func processInCgroupOf(containerID string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err == nil && strings.Contains(string(b), containerID) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process in the cgroup of container %s", containerID)
}

// cgroupPaths returns the path of each line of /proc/<pid>/cgroup.
func cgroupPaths(pid int) ([]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var paths []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("/proc/%d/cgroup line %q", pid, s.Text())
		}
		paths = append(paths, parts[2])
	}
	return paths, s.Err()
}
