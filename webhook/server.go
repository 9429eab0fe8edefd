// Package webhook is meshcert's admission webhook for Kuma's Mesh objects:
// the defaulting handler, which adds only issuerRef's kind and group as JSON
// patches; the validating handler, which answers with every problem that
// package validation finds as one Invalid status; their registration; and
// the HTTPS server that drains its connections on shutdown.
package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/internal/lookup"
)

// ServerOptions configures the webhook HTTPS server.
type ServerOptions struct {
	Host, CertDir, CertName, KeyName string
	Port                             int
	TLSMinVersion                    uint16
	EnableHTTP2                      bool
	// Drain is how long the server keeps answering once asked to stop.
	Drain time.Duration
}

// NewServer builds the webhook server. Its serving certificate is reloaded
// from CertDir whenever the files change.
func NewServer(o ServerOptions) *Server {
	return &Server{
		Server: webhook.NewServer(webhook.Options{
			Host:     o.Host,
			Port:     o.Port,
			CertDir:  o.CertDir,
			CertName: o.CertName,
			KeyName:  o.KeyName,
			TLSOpts:  TLSOptions(o.TLSMinVersion, o.EnableHTTP2),
		}),
		drain: o.Drain,
	}
}

// Server is controller-runtime's webhook server, with a drain: once asked to
// stop, it keeps answering for a while, but closes each connection after its
// answer. The API server reuses its connections to a terminating replica;
// this moves it to the other replicas before the listener goes, so that no
// admission fails.
type Server struct {
	webhook.Server
	drain    time.Duration
	draining atomic.Bool
}

// Register implements webhook.Server.
func (s *Server) Register(path string, hook http.Handler) {
	s.Server.Register(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		hook.ServeHTTP(w, r)
	}))
}

// Start implements webhook.Server.
func (s *Server) Start(ctx context.Context) error {
	serving, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go func() {
		select {
		case <-ctx.Done():
		case <-serving.Done():
			return
		}
		s.draining.Store(true)
		logf.FromContext(ctx).Info("Draining the webhook server", "period", s.drain)
		time.Sleep(s.drain)
		stop()
	}()
	return s.Server.Start(serving)
}

// DrainingChecker fails once the server drains, so the replica leaves the
// Service's endpoints.
func (s *Server) DrainingChecker() healthz.Checker {
	return func(*http.Request) error {
		if s.draining.Load() {
			return errors.New("the webhook server is draining")
		}
		return nil
	}
}

// TLSOptions hardens a server's TLS: a minimum version, and HTTP/1.1 only
// unless HTTP/2 is asked for (it is exposed to rapid-reset attacks).
func TLSOptions(minVersion uint16, enableHTTP2 bool) []func(*tls.Config) {
	return []func(*tls.Config){func(c *tls.Config) {
		c.MinVersion = minVersion
		if !enableHTTP2 {
			c.NextProtos = []string{"http/1.1"}
		}
	}}
}

// Register serves the defaulting and validating handlers for Meshes and
// MeshIdentities on the manager's webhook server, reading referenced objects
// from the index.
func Register(mgr ctrl.Manager, o RegisterOptions) {
	srv := mgr.GetWebhookServer()
	srv.Register(DefaultingPath, NewAdmission(Defaulter{}))
	srv.Register(ValidatingPath, NewAdmission(&Validator{
		SystemNamespace:     o.SystemNamespace,
		Lookup:              o.Lookup,
		Now:                 time.Now,
		AllowUnsafeCASwitch: o.AllowUnsafeCASwitch,
	}))
	srv.Register(MeshIdentityDefaultingPath, NewAdmission(MeshIdentityDefaulter{}))
	srv.Register(MeshIdentityValidatingPath, NewAdmission(&MeshIdentityValidator{
		SystemNamespace: o.SystemNamespace,
		LocalZone:       o.Zone,
		Lookup:          o.Lookup,
		Now:             time.Now,
	}))
}

// RegisterOptions are what the handlers need.
type RegisterOptions struct {
	SystemNamespace     string
	Zone                string
	AllowUnsafeCASwitch bool
	Lookup              *lookup.Index
}

// NewAdmission serves an admission handler. Its logger carries only a name:
// controller-runtime's default adds the request's kind and resource to a new
// logger on every request, which cost a third of an admission's time.
func NewAdmission(h admission.Handler) *admission.Webhook {
	return &admission.Webhook{
		Handler:        h,
		LogConstructor: func(base logr.Logger, _ *admission.Request) logr.Logger { return base.WithName("admission") },
	}
}
