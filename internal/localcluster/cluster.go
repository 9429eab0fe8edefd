// Package localcluster runs meshcert's whole system on this machine, with no
// cluster: kube-apiserver and etcd under controller-runtime's envtest, with
// the Kuma-compatible and cert-manager CRDs installed, cert-manager's own
// controllers in-process, local CA issuers, and meshcert itself with its
// webhooks registered by URL. `make run` is RunLocal; the end-to-end tests and
// the benchmarks start the same parts one by one.
package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	chart "github.com/meshcert/meshcert/charts/meshcert"
	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/webhook"
)

// AssetsEnv names the folder holding kube-apiserver, etcd and kubectl, as
// hack/cluster-bins.sh prints it. The Makefile sets it.
const AssetsEnv = "KUBEBUILDER_ASSETS"

// Options configures a test cluster.
type Options struct {
	// Webhooks registers meshcert's webhooks with the API server, served on
	// a free loopback port with a generated CA.
	Webhooks bool
	// Dir holds the cluster's files: the admin kubeconfig, etcd's data and
	// the API server's certificates. Stop removes them. Default: a new
	// temporary folder. One cluster at a time may use it: Start refuses a
	// folder in use, and ends the processes of a cluster whose process was
	// killed before it stopped them.
	Dir string
	// Log receives what Start does about such a cluster; default: discarded.
	Log logr.Logger
	// APIServerAddress is the address kube-apiserver listens on, advertises
	// and names in its serving certificate, for clients beyond loopback
	// such as a node's pods. Default: 127.0.0.1.
	APIServerAddress string
	// APIServerArgs are kube-apiserver flags, by name without dashes, that
	// replace envtest's.
	APIServerArgs map[string][]string
}

// Cluster is a running test cluster.
type Cluster struct {
	Config *rest.Config
	Client client.Client
	// Kubeconfig is the path of an admin kubeconfig for kubectl.
	Kubeconfig string
	// WebhookHost, WebhookPort and CertDir say where the API server expects
	// meshcert's webhook server, and the certificate it trusts there.
	WebhookHost string
	WebhookPort int
	CertDir     string
	// WebhookCA is the CA of the webhook's serving certificate.
	WebhookCA []byte

	env     *envtest.Environment
	dir     string
	tempDir bool
	guard   *dirGuard
	// starter starts kube-apiserver and etcd: they die when it ends.
	starter *lockedThread
}

// Start starts kube-apiserver and etcd, and registers the webhooks if asked;
// InstallCRDs installs the CRDs.
func Start(opts Options) (*Cluster, error) {
	assets := os.Getenv(AssetsEnv)
	if assets == "" {
		return nil, fmt.Errorf("%s is not set: run `make test`, or export %s=$(hack/cluster-bins.sh assets)", AssetsEnv, AssetsEnv)
	}
	var err error
	c := &Cluster{dir: opts.Dir}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "meshcert-cluster-"); err != nil {
			return nil, err
		}
		c.tempDir = true
	}
	if c.dir, err = filepath.Abs(c.dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	log := opts.Log
	if log.GetSink() == nil {
		log = logr.Discard()
	}
	if c.guard, err = guardDir(c.dir, log, leftoverGrace); err != nil {
		if c.tempDir {
			_ = os.RemoveAll(c.dir)
		}
		return nil, err
	}
	// Fresh state: a previous run's etcd data would hold its objects.
	for _, d := range []string{c.etcdDir(), c.apiServerDir(), c.binDir()} {
		if err := os.RemoveAll(d); err != nil {
			c.cleanup()
			return nil, err
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			c.cleanup()
			return nil, err
		}
	}
	etcd, err := tiedBinary(c.binDir(), filepath.Join(assets, "etcd"))
	if err != nil {
		c.cleanup()
		return nil, err
	}
	apiServer, err := tiedBinary(c.binDir(), filepath.Join(assets, "kube-apiserver"))
	if err != nil {
		c.cleanup()
		return nil, err
	}
	c.env = &envtest.Environment{
		BinaryAssetsDirectory: assets,
		Scheme:                app.Scheme(),
		ControlPlane: envtest.ControlPlane{
			Etcd:      &envtest.Etcd{Path: etcd, DataDir: c.etcdDir()},
			APIServer: &envtest.APIServer{Path: apiServer, CertDir: c.apiServerDir()},
		},
		ControlPlaneStartTimeout: time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	if err := c.configureAPIServer(opts); err != nil {
		c.cleanup()
		return nil, err
	}
	if opts.Webhooks {
		if err := c.prepareWebhooks(); err != nil {
			c.cleanup()
			return nil, err
		}
	}
	c.starter = newLockedThread()
	c.starter.do(func() { c.Config, err = c.env.Start() })
	if err != nil {
		c.cleanup()
		return nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	if err := c.recordProcesses(); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	// envtest writes the webhook's serving certificate to a folder of its own.
	c.CertDir = c.env.WebhookInstallOptions.LocalServingCertDir
	c.WebhookCA = c.env.WebhookInstallOptions.LocalServingCAData
	// Client-side throttling would distort every measurement against this
	// cluster; the server's own priority and fairness still applies.
	c.Config.QPS, c.Config.Burst = -1, -1
	if c.Client, err = client.New(c.Config, client.Options{Scheme: app.Scheme()}); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	if err := c.writeKubeconfig(); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	return c, nil
}

// InstallCRDs installs the Kuma-compatible and cert-manager CRDs, and waits
// until the API server serves them.
func (c *Cluster) InstallCRDs() error {
	crds, err := CRDs()
	if err != nil {
		return err
	}
	_, err = envtest.InstallCRDs(c.Config, envtest.CRDInstallOptions{CRDs: crds, MaxTime: time.Minute})
	return err
}

// configureAPIServer applies the address and flags of opts.
func (c *Cluster) configureAPIServer(opts Options) error {
	apiServer := c.env.ControlPlane.GetAPIServer()
	if opts.APIServerAddress != "" {
		// envtest picks a loopback address unless it is given both parts.
		l, err := net.Listen("tcp", net.JoinHostPort(opts.APIServerAddress, "0"))
		if err != nil {
			return fmt.Errorf("finding a free port for kube-apiserver: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if err := l.Close(); err != nil {
			return err
		}
		apiServer.SecureServing.Address, apiServer.SecureServing.Port = opts.APIServerAddress, strconv.Itoa(port)
		apiServer.Configure().Set("advertise-address", opts.APIServerAddress)
	}
	for name, values := range opts.APIServerArgs {
		apiServer.Configure().Set(name, values...)
	}
	return nil
}

func (c *Cluster) etcdDir() string      { return filepath.Join(c.dir, "etcd") }
func (c *Cluster) apiServerDir() string { return filepath.Join(c.dir, "apiserver") }
func (c *Cluster) binDir() string       { return filepath.Join(c.dir, "bin") }

// recordProcesses records kube-apiserver and etcd, for the next cluster in
// this folder to end should this process be killed and they outlive it.
func (c *Cluster) recordProcesses() error {
	pids, err := childrenNaming(c.dir)
	if err != nil {
		return err
	}
	return c.guard.record(pids)
}

// Dir is the folder of the cluster's files.
func (c *Cluster) Dir() string { return c.dir }

// prepareWebhooks picks the webhook server's address and registers meshcert's
// configurations for it, by URL. envtest generates the serving certificate and
// fills in the caBundle.
func (c *Cluster) prepareWebhooks() error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	c.WebhookHost, c.WebhookPort = "127.0.0.1", port
	reg := webhook.RegistrationOptions{
		Name: "meshcert-local",
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			url := fmt.Sprintf("https://%s%s", net.JoinHostPort(c.WebhookHost, fmt.Sprint(port)), path)
			return admissionregistrationv1.WebhookClientConfig{URL: &url}
		},
		FailurePolicy: admissionregistrationv1.Fail,
		// The chart's default: every test then shows that each admission is
		// answered within it, or the API server would fail the request.
		TimeoutSeconds: 5,
	}
	c.env.WebhookInstallOptions = envtest.WebhookInstallOptions{
		MutatingWebhooks:   []*admissionregistrationv1.MutatingWebhookConfiguration{webhook.MutatingConfiguration(reg)},
		ValidatingWebhooks: []*admissionregistrationv1.ValidatingWebhookConfiguration{webhook.ValidatingConfiguration(reg)},
		LocalServingHost:   c.WebhookHost,
		LocalServingPort:   port,
	}
	return nil
}

// MeshcertConfig is meshcert's configuration for this cluster: the webhook
// served where the API server expects it, metrics and probes off.
func (c *Cluster) MeshcertConfig(systemNamespace string) (config.Config, error) {
	cfg, err := config.Parse(nil, func(string) string { return "" }, os.Stderr)
	if err != nil {
		return cfg, err
	}
	cfg.Kubeconfig = c.Kubeconfig
	cfg.SystemNamespace = systemNamespace
	cfg.LeaderElectionNamespace = systemNamespace
	cfg.WebhookEnabled = c.WebhookPort != 0
	cfg.WebhookHost, cfg.WebhookPort, cfg.CertDir = c.WebhookHost, c.WebhookPort, c.CertDir
	cfg.MetricsAddr, cfg.ProbeAddr = "0", "0"
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.WebhookDrain = 0
	return cfg, nil
}

func (c *Cluster) writeKubeconfig() error {
	user, err := c.env.AddUser(envtest.User{Name: "meshcert-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("creating the admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.dir, "kubeconfig")
	return os.WriteFile(c.Kubeconfig, kc, 0o600)
}

// WriteUserKubeconfig writes, at path, a kubeconfig authenticating with a
// client certificate for user in groups, such as a kubelet's
// system:node:<name> in system:nodes.
func (c *Cluster) WriteUserKubeconfig(path, user string, groups ...string) error {
	authenticated, err := c.env.AddUser(envtest.User{Name: user, Groups: groups}, nil)
	if err != nil {
		return fmt.Errorf("creating the user %s: %w", user, err)
	}
	kc, err := authenticated.KubeConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(path, kc, 0o600)
}

// WriteKubeconfigAs writes, at path, the admin kubeconfig impersonating
// user, for a process that must act under that user's RBAC.
func (c *Cluster) WriteKubeconfigAs(path, user string) error {
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return err
	}
	for _, info := range kc.AuthInfos {
		info.Impersonate = user
	}
	return clientcmd.WriteToFile(*kc, path)
}

// RestartControlPlane kills kube-apiserver, as a crash would (a graceful
// stop waits out every open watch), stops etcd, waits, and starts both again
// on the same ports, certificates and data: clients must reconnect.
func (c *Cluster) RestartControlPlane(down time.Duration) error {
	cp := c.env.ControlPlane
	if err := killProcessesUsing(c.apiServerDir()); err != nil {
		return err
	}
	if err := cp.APIServer.Stop(); err != nil {
		return fmt.Errorf("stopping kube-apiserver: %w", err)
	}
	if err := cp.Etcd.Stop(); err != nil {
		return fmt.Errorf("stopping etcd: %w", err)
	}
	time.Sleep(down)
	var err error
	c.starter.do(func() {
		if err = cp.Etcd.Start(); err != nil {
			err = fmt.Errorf("starting etcd: %w", err)
			return
		}
		if err = cp.APIServer.Start(); err != nil {
			err = fmt.Errorf("starting kube-apiserver: %w", err)
		}
	})
	if err != nil {
		return err
	}
	return c.recordProcesses()
}

// Stop stops the API server and etcd and removes the cluster's files.
func (c *Cluster) Stop() error {
	err := c.env.Stop()
	c.cleanup()
	return err
}

// cleanup removes the cluster's files and releases its folder. Ending the
// starter's thread SIGKILLs whatever it started that a failed stop left.
func (c *Cluster) cleanup() {
	if c.starter != nil {
		c.starter.close()
	}
	_ = c.guard.release()
	if c.tempDir {
		_ = os.RemoveAll(c.dir)
		return
	}
	for _, p := range []string{c.etcdDir(), c.apiServerDir(), c.binDir(), c.Kubeconfig} {
		if p != "" {
			_ = os.RemoveAll(p)
		}
	}
}

// Kubectl runs the real kubectl against the cluster, with stdin if not nil.
func (c *Cluster) Kubectl(ctx context.Context, stdin []byte, args ...string) (stdout, stderr string, err error) {
	return c.KubectlIn(ctx, "", stdin, args...)
}

// KubectlIn runs kubectl in the folder dir.
func (c *Cluster) KubectlIn(ctx context.Context, dir string, stdin []byte, args ...string) (stdout, stderr string, err error) {
	kubectl := filepath.Join(os.Getenv(AssetsEnv), "kubectl")
	kubeconfig, err := filepath.Abs(c.Kubeconfig)
	if err != nil {
		return "", "", err
	}
	cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// CRDs returns the Kuma-compatible CRDs from the chart and cert-manager's CRDs
// from its Go module.
func CRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	files, err := chart.KumaCRDFiles()
	if err != nil {
		return nil, err
	}
	dir, err := CertManagerCRDDir()
	if err != nil {
		return nil, err
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		files = append(files, b)
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(f, crd); err != nil {
			return nil, fmt.Errorf("reading a CRD: %w", err)
		}
		crds = append(crds, crd)
	}
	return crds, nil
}

// CertManagerCRDDir finds deploy/crds in the cert-manager module this build uses.
func CertManagerCRDDir() (string, error) {
	dir, err := ModuleDir("github.com/cert-manager/cert-manager")
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "deploy", "crds"), nil
}

// ModuleDir is the folder of the module path at the version this build uses,
// where its CRDs and other files are.
func ModuleDir(path string) (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", path).Output()
	if err != nil {
		return "", fmt.Errorf("locating the module %s for its files (run from the meshcert checkout): %w", path, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// killProcessesUsing SIGKILLs the processes whose command line names dir,
// and waits until they are gone.
func killProcessesUsing(dir string) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return err
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(filepath.Join("/proc", e.Name())); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d outlived SIGKILL", pid)
			}
		}
	}
	return nil
}

// FreePort finds a loopback port that nothing listens on.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
