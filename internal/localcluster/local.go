package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/meshcert/meshcert/internal/testpki"
	crzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// LocalOptions configures RunLocal.
type LocalOptions struct {
	// Dir holds the kubeconfig, the logs and the cluster's state.
	Dir string
	// Out receives the progress report; Ready is called once all is up.
	Out io.Writer
	// SystemNamespace is the mesh's system namespace.
	SystemNamespace string
}

// LocalCA names the CA key pair Secret, the Issuer and the ClusterIssuer of a
// local run; LocalCA2 an Issuer of a second, independent CA, to rotate to.
const (
	LocalCA  = "local-ca"
	LocalCA2 = "local-ca-2"
)

// StepError says which step of RunLocal failed.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("step %q failed: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// RunLocal starts the whole system on this machine, with the same harness as
// the tests, reports each step with its timing, and keeps it running until
// ctx is done. Then it stops everything it started.
func RunLocal(ctx context.Context, opts LocalOptions) (err error) {
	out := opts.Out
	start := time.Now()
	steps := 0
	step := func(name string, fn func() (string, error)) error {
		steps++
		fmt.Fprintf(out, "[%d/8] %s ...", steps, name)
		t := time.Now()
		detail, err := fn()
		if err != nil {
			fmt.Fprintln(out, " failed")
			return &StepError{Step: name, Err: err}
		}
		fmt.Fprintf(out, " %s", time.Since(t).Round(10*time.Millisecond))
		if detail != "" {
			fmt.Fprintf(out, " (%s)", detail)
		}
		fmt.Fprintln(out)
		return nil
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return &StepError{Step: "prepare " + opts.Dir, Err: err}
	}

	if err := step("cluster binaries: kube-apiserver, etcd", func() (string, error) {
		return clusterBinaries(out)
	}); err != nil {
		return err
	}

	var c *Cluster
	if err := step("kube-apiserver and etcd", func() (string, error) {
		var err error
		// Says what it ends of an earlier, killed run, under the heading.
		progress := &indented{w: out}
		c, err = Start(Options{Webhooks: true, Dir: opts.Dir, Log: fileLogger(progress, "cluster")})
		if progress.wroteAny {
			fmt.Fprint(out, "\n      done in")
		}
		if err != nil {
			return "", err
		}
		return c.Config.Host, nil
	}); err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "stopping kube-apiserver and etcd")
		err = errors.Join(err, c.Stop())
	}()

	if err := step("CRDs: Kuma's Mesh, Dataplane, MeshIdentity, MeshTrust; cert-manager", func() (string, error) {
		return "", c.InstallCRDs()
	}); err != nil {
		return err
	}

	logFile, err := os.Create(filepath.Join(opts.Dir, "meshcert.log"))
	if err != nil {
		return &StepError{Step: "open the log file", Err: err}
	}
	defer logFile.Close()

	var cm *CertManager
	if err := step("cert-manager controllers: issuers, clusterissuers, approver, CA signer", func() (string, error) {
		var err error
		cm, err = c.StartCertManager(ctx, CertManagerOptions{ClusterResourceNamespace: opts.SystemNamespace, Log: fileLogger(logFile, "cert-manager")})
		return "", err
	}); err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "stopping cert-manager")
		cm.Stop()
	}()

	if err := step(fmt.Sprintf("namespace %s: Issuer and ClusterIssuer %s, Issuer %s", opts.SystemNamespace, LocalCA, LocalCA2), func() (string, error) {
		return "", setupLocalCA(ctx, c, opts.SystemNamespace)
	}); err != nil {
		return err
	}

	var m *Meshcert
	var metricsAddr string
	if err := step("meshcert: webhook and reconciler", func() (string, error) {
		cfg, err := c.MeshcertConfig(opts.SystemNamespace)
		if err != nil {
			return "", err
		}
		cfg.Dev = true
		port, err := FreePort()
		if err != nil {
			return "", err
		}
		metricsAddr = net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
		cfg.MetricsAddr = metricsAddr
		m, err = c.StartMeshcert(ctx, cfg, MeshcertOptions{Logs: logFile})
		return "", err
	}); err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "stopping meshcert")
		err = errors.Join(err, m.Stop())
	}()

	socket := filepath.Join(opts.Dir, "agent", "socket")
	var agent *Agent
	if err := step("meshcert agent: node local, unix attestor", func() (string, error) {
		var err error
		agent, err = c.StartAgent(ctx, opts.SystemNamespace, "local", socket)
		return "", err
	}); err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "stopping the agent")
		err = errors.Join(err, agent.Stop())
	}()

	if err := step("admin kubeconfig", func() (string, error) {
		return relative(c.Kubeconfig), nil
	}); err != nil {
		return err
	}

	kubeconfig := relative(c.Kubeconfig)
	fmt.Fprintf(out, "meshcert is ready after %s; Ctrl-C stops it.\n", time.Since(start).Round(10*time.Millisecond))
	fmt.Fprintf(out, "  kubeconfig: %s\n  logs:       %s\n  metrics:    http://%s/metrics\n  agent:      %s\n", kubeconfig, relative(logFile.Name()), metricsAddr, relative(socket))
	fmt.Fprintf(out, "Try:\n  kubectl --kubeconfig %s apply -f examples/mesh.yaml\n", kubeconfig)
	fmt.Fprintf(out, "  kubectl --kubeconfig %s apply -f examples/dataplanes.yaml\n", kubeconfig)
	fmt.Fprintf(out, "  kubectl --kubeconfig %s apply -f examples/broken/\n", kubeconfig)
	<-ctx.Done()
	fmt.Fprintln(out, "shutting down")
	return nil
}

// clusterBinaries finds kube-apiserver and etcd, building them on first use.
func clusterBinaries(out io.Writer) (string, error) {
	if dir := os.Getenv(AssetsEnv); dir != "" {
		return "from " + AssetsEnv, nil
	}
	cmd := exec.Command("hack/cluster-bins.sh", "assets")
	progress := &indented{w: out}
	cmd.Stderr = progress
	dir, err := cmd.Output()
	if progress.wroteAny {
		fmt.Fprint(out, "\n      done in")
	}
	if err != nil {
		return "", fmt.Errorf("hack/cluster-bins.sh (run from the meshcert checkout): %w", err)
	}
	assets := strings.TrimSpace(string(dir))
	if err := os.Setenv(AssetsEnv, assets); err != nil {
		return "", err
	}
	return assets, nil
}

// setupLocalCA makes the system namespace, a self-signed CA with a CA Issuer
// and ClusterIssuer named local-ca, and a second CA with an Issuer
// local-ca-2.
func setupLocalCA(ctx context.Context, c *Cluster, namespace string) error {
	if err := EnsureNamespace(ctx, c.Client, namespace); err != nil {
		return err
	}
	ca, err := testpki.New("meshcert local CA", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived))
	if err != nil {
		return err
	}
	ca2, err := testpki.New("meshcert local CA 2", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived))
	if err != nil {
		return err
	}
	return CreateCAIssuers(ctx, c.Client, []CAIssuer{
		{Name: LocalCA, Namespace: namespace, SecretName: LocalCA, SecretNamespace: namespace, CA: ca},
		{Name: LocalCA, SecretName: LocalCA, SecretNamespace: namespace, CA: ca},
		{Name: LocalCA2, Namespace: namespace, SecretName: LocalCA2, SecretNamespace: namespace, CA: ca2},
	})
}

// fileLogger logs to w in zap's console format.
func fileLogger(w io.Writer, name string) logr.Logger {
	return crzap.New(crzap.WriteTo(w), crzap.UseDevMode(true)).WithName(name)
}

// relative shortens a path under the working directory.
func relative(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

// indented writes lines under a step's heading, each indented on its own line.
type indented struct {
	w        io.Writer
	midLine  bool
	wroteAny bool
}

func (i *indented) Write(p []byte) (int, error) {
	for _, chunk := range strings.SplitAfter(string(p), "\n") {
		if chunk == "" {
			continue
		}
		text := strings.TrimSuffix(chunk, "\n")
		if !i.midLine {
			text = "\n      " + text
		}
		if _, err := io.WriteString(i.w, text); err != nil {
			return 0, err
		}
		i.midLine = !strings.HasSuffix(chunk, "\n")
		i.wroteAny = true
	}
	return len(p), nil
}
