package localcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/app"
)

// InOneProcess lets meshcert run more than once in this process, as the local
// runner and the tests run it: controller-runtime refuses a second controller
// of the same name in a process, since their metrics would mix.
func InOneProcess(o *ctrl.Options) {
	o.Controller.SkipNameValidation = ptr.To(true)
}

// Meshcert is meshcert itself, started through the same app.Run as the binary.
type Meshcert struct {
	cancel context.CancelFunc
	done   chan error
}

// MeshcertOptions says how meshcert reaches the cluster and where it logs.
type MeshcertOptions struct {
	Logs io.Writer
	// Wrap, if not nil, wraps meshcert's transport to the API server, to observe it.
	Wrap func(http.RoundTripper) http.RoundTripper
	// As, if set, is the user meshcert acts as, e.g. a ServiceAccount's
	// system:serviceaccount:NS:NAME, so that its RBAC applies. Default: admin.
	As string
}

// StartMeshcert runs meshcert with cfg through app.Run, and waits until its
// readiness probe passes. The probe address is chosen here.
func (c *Cluster) StartMeshcert(ctx context.Context, cfg config.Config, opts MeshcertOptions) (*Meshcert, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	cfg.ProbeAddr = net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	ctrl.SetLogger(zap.New(append(app.LogOptions(cfg.Common), zap.WriteTo(opts.Logs))...))

	ctx, cancel := context.WithCancel(ctx)
	m := &Meshcert{cancel: cancel, done: make(chan error, 1)}
	restConfig := rest.CopyConfig(c.Config)
	restConfig.WrapTransport = opts.Wrap
	restConfig.Impersonate.UserName = opts.As
	go func() { m.done <- app.Run(ctx, cfg, restConfig, InOneProcess) }()

	readyz := "http://" + cfg.ProbeAddr + "/readyz"
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-m.done:
			return false, fmt.Errorf("meshcert exited before it was ready: %w", err)
		default:
		}
		resp, err := http.Get(readyz)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		cancel()
		return nil, err
	}
	return m, nil
}

// Stop cancels meshcert and waits for its graceful shutdown.
func (m *Meshcert) Stop() error {
	m.cancel()
	return <-m.done
}

// Agent is meshcert's node agent, started through the same app.RunAgent as
// the binary's meshcert agent.
type Agent struct {
	cancel context.CancelFunc
	done   chan error
}

// StartAgent runs a node agent for node with the unix attestor, serving on
// socket, and waits until the socket is served.
func (c *Cluster) StartAgent(ctx context.Context, systemNamespace, node, socket string) (*Agent, error) {
	socket, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	cfg, err := config.ParseAgent([]string{
		"--system-namespace", systemNamespace, "--node-name", node, "--socket", socket,
		"--attestor", config.AttestorUnix, "--health-probe-bind-address", "0", "--dev",
	}, func(string) string { return "" }, io.Discard)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &Agent{cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- app.RunAgent(ctx, cfg, c.Config, InOneProcess) }()
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		select {
		case err := <-a.done:
			return false, fmt.Errorf("the agent exited before it served: %w", err)
		default:
		}
		conn, err := net.Dial("unix", socket)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		cancel()
		return nil, err
	}
	return a, nil
}

// Stop cancels the agent and waits for it.
func (a *Agent) Stop() error {
	a.cancel()
	return <-a.done
}
