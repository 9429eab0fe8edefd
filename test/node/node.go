//go:build linux

// Package node runs a real Kubernetes node on this machine for the tests:
// containerd, the kubelet, kube-proxy, kube-controller-manager and
// kube-scheduler, joined to a test cluster of internal/localcluster, with
// pods on a bridge of the test's own; and it removes every trace the node
// leaves on the machine, also one a killed run left.
//
// Every address it uses lives on that bridge: the pods' subnet, the node's
// address, and kube-apiserver's, which is also the ClusterIP of the
// kubernetes Service so that the API server's serving certificate, which
// envtest makes for its listening address, is valid for pods too. Pods get
// routes to the pods' and the Services' subnets only.
package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// BinsEnv names the folder holding kubelet, kube-controller-manager,
// kube-scheduler and kube-proxy, as `hack/cluster-bins.sh node` prints it.
const BinsEnv = "MESHCERT_NODE_BINS"

const (
	// Name is the node's name.
	Name = "meshcert-node"
	// BridgeName is the pods' bridge.
	BridgeName = "meshcert0"
	// PauseImage is the pods' sandbox image, which LoadImage has imported.
	PauseImage = "meshcert.test/pause:1"

	podSubnet     = "10.203.0.0/24"
	nodeIP        = "10.203.0.1"
	serviceSubnet = "10.204.0.0/24"
	// apiServerIP is the first address of serviceSubnet, the kubernetes
	// Service's ClusterIP.
	apiServerIP = "10.204.0.1"
	cniBinDir   = "/usr/lib/cni"
)

// Node is a node of the test cluster on this machine.
type Node struct {
	bins      string
	root      string
	processes []*process
}

// New checks that this machine has what a node needs, removes what an
// earlier run left, and creates the node's bridge and certificates: start
// the cluster with ClusterOptions, then the node with Start.
func New() (*Node, error) {
	n := &Node{bins: os.Getenv(BinsEnv)}
	if err := n.checkBinaries(); err != nil {
		return nil, err
	}
	if err := Cleanup(); err != nil {
		return nil, fmt.Errorf("removing what an earlier node left: %w", err)
	}
	if err := recordSysctls(); err != nil {
		return nil, err
	}
	var err error
	if n.root, err = os.MkdirTemp("", rootPrefix); err != nil {
		return nil, err
	}
	for _, dir := range []string{"logs", "pki", "net.d", "images"} {
		if err := os.MkdirAll(filepath.Join(n.root, dir), 0o755); err != nil {
			return nil, errors.Join(err, n.Stop())
		}
	}
	if err := n.createBridge(); err != nil {
		return nil, errors.Join(err, n.Stop())
	}
	if err := shareKubeletDir(); err != nil {
		return nil, errors.Join(err, n.Stop())
	}
	if err := n.writeKubeletClientPKI(); err != nil {
		return nil, errors.Join(err, n.Stop())
	}
	return n, nil
}

// checkBinaries fails with the command that installs or builds what is
// missing.
func (n *Node) checkBinaries() error {
	if n.bins == "" {
		return fmt.Errorf("%s is not set: export %s=$(hack/cluster-bins.sh node)", BinsEnv, BinsEnv)
	}
	var errs []error
	for _, name := range []string{"kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(n.bins, name)); err != nil {
			errs = append(errs, fmt.Errorf("%w: run hack/cluster-bins.sh node", err))
		}
	}
	for _, name := range []string{"containerd", "ctr", "runc", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "nft", "ip"} {
		if _, err := exec.LookPath(name); err != nil {
			errs = append(errs, fmt.Errorf("%w: run hack/packages.sh", err))
		}
	}
	for _, name := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, name)); err != nil {
			errs = append(errs, fmt.Errorf("%w: run hack/packages.sh", err))
		}
	}
	return errors.Join(errs...)
}

// createBridge creates the pods' bridge with the node's address and the
// API server's.
func (n *Node) createBridge() error {
	for _, args := range [][]string{
		{"link", "add", BridgeName, "type", "bridge"},
		{"addr", "add", nodeIP + "/24", "dev", BridgeName},
		{"addr", "add", apiServerIP + "/32", "dev", BridgeName},
		{"link", "set", BridgeName, "up"},
	} {
		if err := run("ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// kubeletDir is the kubelet's root folder, where it mounts pods' volumes.
const kubeletDir = "/var/lib/kubelet"

// shareKubeletDir makes the kubelet's folder a shared mount of its own: a
// CSI driver's pod mounts volumes there with Bidirectional propagation,
// which containerd refuses under a private mount such as this machine's /.
func shareKubeletDir() error {
	if err := os.MkdirAll(kubeletDir, 0o700); err != nil {
		return err
	}
	if err := syscall.Mount(kubeletDir, kubeletDir, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", kubeletDir, err)
	}
	if err := syscall.Mount("", kubeletDir, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("sharing %s: %w", kubeletDir, err)
	}
	return nil
}

func (n *Node) pki(name string) string { return filepath.Join(n.root, "pki", name) }

// writeKubeletClientPKI makes the CA the kubelet trusts for clients, and
// kube-apiserver's client certificate from it, in system:masters, for
// `kubectl logs` and `exec`.
func (n *Node) writeKubeletClientPKI() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshcert-node kubelet client CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver", Organization: []string{"system:masters"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	for name, block := range map[string]*pem.Block{
		"kubelet-client-ca.crt":        {Type: "CERTIFICATE", Bytes: caDER},
		"apiserver-kubelet-client.crt": {Type: "CERTIFICATE", Bytes: der},
		"apiserver-kubelet-client.key": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(n.pki(name), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ClusterOptions are the test cluster's options for this node: kube-apiserver
// on the bridge, with the Node authorizer, NodeRestriction and the
// ServiceAccount admission, the Services' subnet, and its kubelet client
// certificate.
func (n *Node) ClusterOptions(opts localcluster.Options) localcluster.Options {
	opts.APIServerAddress = apiServerIP
	opts.APIServerArgs = map[string][]string{
		"authorization-mode":         {"Node,RBAC"},
		"enable-admission-plugins":   {"NodeRestriction,ServiceAccount"},
		"disable-admission-plugins":  {""},
		"service-cluster-ip-range":   {serviceSubnet},
		"kubelet-client-certificate": {n.pki("apiserver-kubelet-client.crt")},
		"kubelet-client-key":         {n.pki("apiserver-kubelet-client.key")},
		// The node's address, not its name, which would be looked up in DNS.
		"kubelet-preferred-address-types": {"InternalIP"},
	}
	return opts
}

func (n *Node) containerdSocket() string {
	return filepath.Join(n.root, "containerd", "containerd.sock")
}

func (n *Node) path(name string) string { return filepath.Join(n.root, name) }

// Start starts containerd with the pause image, the controllers, the
// kubelet and kube-proxy, and waits until the node is Ready.
func (n *Node) Start(ctx context.Context, c *localcluster.Cluster) error {
	if err := n.start(ctx, c); err != nil {
		return errors.Join(err, n.errExited())
	}
	return nil
}

func (n *Node) start(ctx context.Context, c *localcluster.Cluster) error {
	adminConfig, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		return err
	}
	// A copy under the root, so that the daemons' command lines name it.
	if err := os.WriteFile(n.path("admin.kubeconfig"), adminConfig, 0o600); err != nil {
		return err
	}
	if err := c.WriteUserKubeconfig(n.path("kubelet.kubeconfig"), "system:node:"+Name, "system:nodes"); err != nil {
		return err
	}
	if err := os.WriteFile(n.pki("apiserver-ca.crt"), c.Config.CAData, 0o644); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	pause := n.path("images/pause")
	if err := BuildStatic(ctx, "github.com/meshcert/meshcert/test/node/pause", pause); err != nil {
		return err
	}
	if err := n.LoadImage(ctx, Image{Tag: PauseImage, Binary: pause, Path: "/pause", User: "65535:65535"}); err != nil {
		return err
	}
	if err := n.writeCNIConfig(); err != nil {
		return err
	}
	admin := "--kubeconfig=" + n.path("admin.kubeconfig")
	if err := n.startProcess("kube-controller-manager", filepath.Join(n.bins, "kube-controller-manager"),
		admin, "--leader-elect=false", "--bind-address="+nodeIP,
		"--root-ca-file="+n.pki("apiserver-ca.crt"), "--use-service-account-credentials=false"); err != nil {
		return err
	}
	if err := n.startProcess("kube-scheduler", filepath.Join(n.bins, "kube-scheduler"),
		admin, "--leader-elect=false", "--bind-address="+nodeIP); err != nil {
		return err
	}
	if err := n.startKubelet(); err != nil {
		return err
	}
	if err := n.startKubeProxy(); err != nil {
		return err
	}
	return n.waitReady(ctx, c.Client)
}

func (n *Node) startContainerd(ctx context.Context) error {
	dir := n.path("containerd")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %[3]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # exec, attach and port-forward, served on the bridge.
  stream_server_address = %[8]q
  stream_server_port = "0"
  # root here lacks CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[7]q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), n.containerdSocket(), filepath.Join(dir, "opt"),
		PauseImage, cniBinDir, n.path("net.d"), nodeIP)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		return err
	}
	if err := n.startProcess("containerd", "containerd", "--config", filepath.Join(dir, "config.toml")); err != nil {
		return err
	}
	return n.poll(ctx, 30*time.Second, "containerd to serve", func() (bool, error) {
		return exec.CommandContext(ctx, "ctr", "--address", n.containerdSocket(), "version").Run() == nil, nil
	})
}

// writeCNIConfig gives pods addresses on the bridge, with routes to the
// pods' and the Services' subnets only: nothing routes beyond them.
func (n *Node) writeCNIConfig() error {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "meshcert-node",
		"plugins": []map[string]any{
			{
				"type": "bridge", "bridge": BridgeName, "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": podSubnet, "gateway": nodeIP}}},
					"routes":  []map[string]string{{"dst": serviceSubnet}},
					"dataDir": n.path("cni/ipam"),
				},
			},
			{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := yaml.Marshal(conf)
	if err != nil {
		return err
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return err
	}
	return os.WriteFile(n.path("net.d/10-meshcert-node.conflist"), j, 0o644)
}

func (n *Node) startKubelet() error {
	config := map[string]any{
		"apiVersion":   "kubelet.config.k8s.io/v1beta1",
		"kind":         "KubeletConfiguration",
		"address":      nodeIP,
		"healthzPort":  0,
		"readOnlyPort": 0,
		// This machine: cgroup v1 without systemd, swap ignored.
		"cgroupDriver": "cgroupfs",
		"failCgroupV1": false,
		"failSwapOn":   false,
		// No eviction nor image garbage collection: a test's pods and
		// images stay while it runs.
		"evictionHard":                map[string]string{},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"authentication": map[string]any{
			"anonymous": map[string]bool{"enabled": false},
			"webhook":   map[string]bool{"enabled": true},
			"x509":      map[string]string{"clientCAFile": n.pki("kubelet-client-ca.crt")},
		},
		"authorization":            map[string]string{"mode": "Webhook"},
		"containerRuntimeEndpoint": "unix://" + n.containerdSocket(),
		"clusterDomain":            "cluster.local",
		// No name servers in pods: nothing may leave the bridge.
		"resolvConf": "",
	}
	b, err := yaml.Marshal(config)
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.path("kubelet.yaml"), b, 0o644); err != nil {
		return err
	}
	return n.startProcess("kubelet", filepath.Join(n.bins, "kubelet"),
		"--config="+n.path("kubelet.yaml"), "--kubeconfig="+n.path("kubelet.kubeconfig"),
		"--node-ip="+nodeIP, "--hostname-override="+Name)
}

func (n *Node) startKubeProxy() error {
	config := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"mode":               "iptables",
		"clientConnection":   map[string]string{"kubeconfig": n.path("admin.kubeconfig")},
		"hostnameOverride":   Name,
		"bindAddress":        nodeIP,
		"healthzBindAddress": nodeIP + ":10256",
		"metricsBindAddress": nodeIP + ":10249",
		"clusterCIDR":        podSubnet,
		"nodePortAddresses":  []string{nodeIP + "/32"},
		// No route_localnet, and the conntrack settings left as they are.
		"iptables":  map[string]any{"localhostNodePorts": false},
		"conntrack": map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
	}
	b, err := yaml.Marshal(config)
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.path("kube-proxy.yaml"), b, 0o644); err != nil {
		return err
	}
	return n.startProcess("kube-proxy", filepath.Join(n.bins, "kube-proxy"), "--config="+n.path("kube-proxy.yaml"))
}

// waitReady waits until the Node is Ready.
func (n *Node) waitReady(ctx context.Context, c client.Client) error {
	return n.poll(ctx, 2*time.Minute, "the node to be Ready", func() (bool, error) {
		node := &corev1.Node{}
		if err := c.Get(ctx, client.ObjectKey{Name: Name}, node); err != nil {
			return false, nil
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// poll calls done until it says so, a daemon exits, or timeout passes.
func (n *Node) poll(ctx context.Context, timeout time.Duration, what string, done func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if err := n.errExited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// LoadImage imports img into the node's containerd, where the kubelet finds
// it.
func (n *Node) LoadImage(ctx context.Context, img Image) error {
	path := filepath.Join(n.root, "images", strings.NewReplacer("/", "_", ":", "_").Replace(img.Tag)+".tar")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WriteImageTar(f, img); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "ctr", "--address", n.containerdSocket(), "-n", "k8s.io", "image", "import", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("importing the image %s: %v: %s", img.Tag, err, out)
	}
	return nil
}

// Restart stops a daemon, kubelet or containerd, and starts it again as it
// was started; it waits for containerd to serve, or the node to be Ready.
func (n *Node) Restart(ctx context.Context, c client.Client, name string) error {
	i := slices.IndexFunc(n.processes, func(p *process) bool { return p.name == name })
	if i < 0 {
		return fmt.Errorf("no daemon %s", name)
	}
	p := n.processes[i]
	criStarts := strings.Count(tail(p.log, 1<<20), criInitialized)
	p.stop(10 * time.Second)
	n.processes = slices.Delete(n.processes, i, i+1)
	restarted := time.Now()
	if err := n.startProcess(name, p.cmd.Path, p.cmd.Args[1:]...); err != nil {
		return err
	}
	if name == "containerd" {
		// The kubelet refuses a CRI that serves but has not initialized.
		return n.poll(ctx, 30*time.Second, "containerd's CRI to initialize", func() (bool, error) {
			return strings.Count(n.Log("containerd", 1<<20), criInitialized) > criStarts, nil
		})
	}
	// The Node's status is the earlier kubelet's until the new one reports,
	// and its heartbeat has whole seconds only (and is reported again only
	// every few minutes): the node's Lease, renewed at once by a new kubelet
	// and in microseconds, tells that the new kubelet is up.
	return n.poll(ctx, 2*time.Minute, "the restarted kubelet to renew the node's Lease, the node Ready", func() (bool, error) {
		lease := &coordinationv1.Lease{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: corev1.NamespaceNodeLease, Name: Name}, lease); err != nil {
			return false, nil
		}
		if lease.Spec.RenewTime == nil || !lease.Spec.RenewTime.After(restarted) {
			return false, nil
		}
		node := &corev1.Node{}
		if err := c.Get(ctx, client.ObjectKey{Name: Name}, node); err != nil {
			return false, nil
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
}

// criInitialized is what containerd 1.6 logs as its CRI plugin becomes
// ready to serve.
const criInitialized = `msg="Start streaming server"`

// Dir is the node's folder, which Stop removes: a place for a test's
// hostPath volumes.
func (n *Node) Dir() string { return n.root }

// Log returns the end of a daemon's log: kubelet, containerd, kube-proxy,
// kube-controller-manager or kube-scheduler.
func (n *Node) Log(name string, lines int) string {
	return tail(filepath.Join(n.root, "logs", name+".log"), lines)
}

// Stop stops the node's daemons, the kubelet first so that it starts no
// more pods, and removes everything the node left on the machine.
func (n *Node) Stop() error {
	for _, name := range []string{"kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager", "containerd"} {
		for _, p := range n.processes {
			if p.name == name {
				p.stop(10 * time.Second)
			}
		}
	}
	return Cleanup()
}
