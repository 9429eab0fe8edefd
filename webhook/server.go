package webhook

import (
	"context"
	"crypto/tls"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/meshcert/meshcert/lookup"
	"github.com/meshcert/meshcert/validation"
)

// ServerOptions configures the webhook HTTPS server.
type ServerOptions struct {
	Host, CertDir, CertName, KeyName string
	Port                             int
	TLSMinVersion                    uint16
	EnableHTTP2                      bool
}

// NewServer builds the webhook server. Its serving certificate is reloaded
// from CertDir whenever the files change.
func NewServer(o ServerOptions) webhook.Server {
	return webhook.NewServer(webhook.Options{
		Host:     o.Host,
		Port:     o.Port,
		CertDir:  o.CertDir,
		CertName: o.CertName,
		KeyName:  o.KeyName,
		TLSOpts:  TLSOptions(o.TLSMinVersion, o.EnableHTTP2),
	})
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

// Register serves the defaulting and validating handlers for Meshes on the
// manager's webhook server, reading referenced objects from its cache.
func Register(mgr ctrl.Manager, systemNamespace string, allowUnsafeCASwitch bool) {
	srv := mgr.GetWebhookServer()
	srv.Register(DefaultingPath, &admission.Webhook{Handler: Defaulter{}})
	srv.Register(ValidatingPath, &admission.Webhook{Handler: &Validator{
		SystemNamespace: systemNamespace,
		Lookup: func(ctx context.Context) validation.Lookup {
			return lookup.Cache{Ctx: ctx, Cache: mgr.GetCache(), SystemNamespace: systemNamespace}
		},
		Now:                 time.Now,
		AllowUnsafeCASwitch: allowUnsafeCASwitch,
	}})
}
