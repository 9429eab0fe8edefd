package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/meshcert/meshcert/app"
	"github.com/meshcert/meshcert/config"
)

// Meshcert is meshcert itself, started through the same app.Run as the binary.
type Meshcert struct {
	cancel context.CancelFunc
	done   chan error
}

// StartMeshcert runs meshcert with cfg, its logs going to logs, and waits until
// its readiness probe passes. The probe address is chosen here. wrap, if not
// nil, wraps meshcert's HTTP transport to the API server, to observe it.
func (c *Cluster) StartMeshcert(ctx context.Context, cfg config.Config, logs io.Writer, wrap func(http.RoundTripper) http.RoundTripper) (*Meshcert, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg.ProbeAddr = net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	ctrl.SetLogger(zap.New(append(app.LogOptions(cfg), zap.WriteTo(logs))...))

	ctx, cancel := context.WithCancel(ctx)
	m := &Meshcert{cancel: cancel, done: make(chan error, 1)}
	restConfig := rest.CopyConfig(c.Config)
	restConfig.WrapTransport = wrap
	go func() { m.done <- app.Run(ctx, cfg, restConfig) }()

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
