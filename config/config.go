// Package config reads meshcert's configuration from flags and environment
// variables, and validates it before anything starts.
package config

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshcert/meshcert/internal/kuma"
)

// EnvPrefix prefixes the environment variable of every flag: --webhook-port is
// also MESHCERT_WEBHOOK_PORT. A flag on the command line wins over its variable.
const EnvPrefix = "MESHCERT_"

// Config is the controller's configuration (meshcert): the webhooks and the
// reconcilers, with what it shares with the agent in Common.
type Config struct {
	Common
	// DataplaneNamespaces limits meshcert to the Dataplanes, and so the
	// Secrets, of these namespaces; empty means every namespace.
	DataplaneNamespaces []string
	// PublishTrustBundles keeps each mesh's roots in a ConfigMap of the
	// system namespace, for clients outside the mesh.
	PublishTrustBundles bool

	WebhookEnabled bool
	WebhookHost    string
	WebhookPort    int
	CertDir        string
	CertName       string
	KeyName        string
	TLSMinVersion  uint16
	EnableHTTP2    bool
	// AllowUnsafeCASwitch lets a Mesh update enable the backend it adds.
	AllowUnsafeCASwitch bool

	ReconcilerEnabled bool
	// ApproveAgentsOf is the node agents' ServiceAccount, <namespace>/<name>,
	// whose CertificateRequests meshcert approves by node; empty leaves them
	// to other approvers.
	ApproveAgentsOf string
	// ApproveSigners are the signers whose agent requests it decides.
	ApproveSigners []string
	KeepRequests   bool
	SyncPeriod     time.Duration
	SwitchWindow   time.Duration

	LeaderElect             bool
	LeaderElectionNamespace string
	LeaderElectionID        string
	LeaseDuration           time.Duration
	RenewDeadline           time.Duration
	RetryPeriod             time.Duration
	ShutdownTimeout         time.Duration
	WebhookDrain            time.Duration

	// ShowVersion asks for the version only; nothing else is validated.
	ShowVersion bool
}

// ErrHelp is returned when -h or --help was asked for; usage has been printed.
var ErrHelp = flag.ErrHelp

// Parse reads the configuration from args (without the program name) and the
// environment, through getenv. Usage and flag errors go to output.
func Parse(args []string, getenv func(string) string, output io.Writer) (Config, error) {
	var c Config
	var tlsMin, dataplaneNamespaces, approveSigners string
	fs := flag.NewFlagSet("meshcert", flag.ContinueOnError)
	fs.SetOutput(output)
	c.addSharedFlags(fs)
	fs.StringVar(&c.SystemNamespace, "system-namespace", "kong-mesh-system", "The mesh's system namespace: where mesh Secrets and Issuers live (kuma-system for Kuma).")
	fs.StringVar(&c.Zone, "zone", "default", "The control plane's zone: the .Zone of a MeshIdentity's trust domain when the identity has no kuma.io/zone label.")
	fs.StringVar(&dataplaneNamespaces, "dataplane-namespaces", "", "Comma-separated namespaces whose Dataplanes get certificates; meshcert needs Secret rights only there. Empty: every namespace.")
	fs.BoolVar(&c.WebhookEnabled, "enable-webhook", true, "Serve the Mesh admission webhooks.")
	fs.StringVar(&c.WebhookHost, "webhook-host", "", "Address the webhook server binds to. Default: all interfaces.")
	fs.IntVar(&c.WebhookPort, "webhook-port", 9443, "Port of the webhook server.")
	fs.StringVar(&c.CertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "Folder holding the webhook's serving certificate; reloaded when it changes.")
	fs.StringVar(&c.CertName, "webhook-cert-name", "tls.crt", "File name of the serving certificate in --webhook-cert-dir.")
	fs.StringVar(&c.KeyName, "webhook-key-name", "tls.key", "File name of the serving key in --webhook-cert-dir.")
	fs.StringVar(&tlsMin, "tls-min-version", "1.2", "Minimum TLS version of the webhook server: 1.2 or 1.3.")
	fs.BoolVar(&c.EnableHTTP2, "enable-http2", false, "Allow HTTP/2 on the webhook and metrics servers. Off by default (CVE-2023-44487, CVE-2023-39325).")
	fs.BoolVar(&c.AllowUnsafeCASwitch, "allow-unsafe-ca-switch", false, "Let one Mesh update add a backend and enable it, skipping the two-step CA rotation. For emergencies, such as a compromised CA key.")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; 0 turns it off.")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints; 0 turns them off.")
	fs.BoolVar(&c.ReconcilerEnabled, "enable-reconciler", true, "Issue and rotate dataplane certificates (behind leader election when --leader-elect is set).")
	fs.StringVar(&c.KeyAlgorithm, "key-algorithm", "ecdsa-p256", "Private key of certificates, unless a Mesh's or MeshIdentity's meshcert.io/key-algorithm annotation says otherwise: "+strings.Join(kuma.KeyAlgorithms, ", ")+" (Kuma's builtin CA makes rsa-2048).")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", 10*time.Second, "How long to wait for a CertificateRequest to be signed; a backend's dpCert.requestTimeout wins.")
	fs.StringVar(&c.ApproveAgentsOf, "approve-agents-of", "", "The node agents' ServiceAccount, <namespace>/<name>: approve each of their CertificateRequests only for an identity of a pod on the node its token names, and deny the rest. Empty: leave them to other approvers.")
	fs.StringVar(&approveSigners, "approve-signers", "issuers.cert-manager.io/*,clusterissuers.cert-manager.io/*", "Comma-separated signers whose agent requests --approve-agents-of decides, as cert-manager names them: issuers.cert-manager.io/<namespace>.<name>, clusterissuers.cert-manager.io/<name>, or <resource>.<group>/* for every issuer of a kind. Requests for other signers are left to other approvers.")
	fs.BoolVar(&c.KeepRequests, "keep-requests", false, "Keep issued CertificateRequests for auditing instead of deleting them.")
	fs.BoolVar(&c.PublishTrustBundles, "publish-trust-bundles", false, "Keep each mesh's roots, exactly what its dataplanes trust, in the ConfigMap meshcert-trust-<mesh> of the system namespace (key ca.crt), labelled meshcert.io/trust-bundle=true for a trust-manager Bundle to take as a source.")
	var requestAnnotations string
	fs.StringVar(&requestAnnotations, "certificate-request-annotations", "", "Annotations added to every CertificateRequest, as key=value pairs separated by commas; some external issuers' policies read them.")
	fs.IntVar(&c.Workers, "workers", 20, "Dataplanes reconciled in parallel.")
	fs.IntVar(&c.MaxInFlight, "max-requests-in-flight", 500, "CertificateRequests open at once; more dataplanes wait their turn. 0 is no limit.")
	fs.DurationVar(&c.SwitchWindow, "switch-window", time.Minute, "When a Mesh's enabled backend changes, spread the dataplanes' reissues over this window.")
	fs.DurationVar(&c.SyncPeriod, "sync-period", 10*time.Hour, "How often every watched object is reconciled again, changed or not.")
	fs.BoolVar(&c.LeaderElect, "leader-elect", false, "Elect a leader through a Lease before reconciling, so that only one replica issues.")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", "", "Namespace of the leader election Lease. Default: the system namespace.")
	fs.StringVar(&c.LeaderElectionID, "leader-election-id", "meshcert-leader", "Name of the leader election Lease.")
	fs.DurationVar(&c.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "How long a crashed leader's Lease holds before another replica takes over.")
	fs.DurationVar(&c.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "How long the leader tries to renew its Lease before giving up leadership.")
	fs.DurationVar(&c.RetryPeriod, "leader-election-retry-period", 2*time.Second, "How often replicas try to acquire or renew the Lease.")
	fs.DurationVar(&c.WebhookDrain, "webhook-drain-period", 5*time.Second, "On SIGTERM, keep answering admissions this long, closing each connection after its answer, so the API server moves to other replicas before the server stops.")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "How long to drain in-flight work on SIGTERM before exiting.")
	fs.IntVar(&c.LogLevel, "log-level", 0, "Log verbosity: 0 logs decisions and problems, 1 every admission, 2 and up more detail.")

	fs.BoolVar(&c.ShowVersion, "version", false, "Print the version, the Go FIPS 140-3 module it was built with (if any) and whether FIPS mode is on, and exit.")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.ShowVersion {
		return c, nil
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q: meshcert takes only flags", fs.Arg(0))
	}
	if err := applyEnv(fs, getenv); err != nil {
		return c, err
	}
	tlsErr := c.setTLSMinVersion(tlsMin)
	annotationsErr := c.setRequestAnnotations(requestAnnotations)
	for _, ns := range strings.Split(dataplaneNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			c.DataplaneNamespaces = append(c.DataplaneNamespaces, ns)
		}
	}
	for _, signer := range strings.Split(approveSigners, ",") {
		if signer = strings.TrimSpace(signer); signer != "" {
			c.ApproveSigners = append(c.ApproveSigners, signer)
		}
	}
	if c.LeaderElectionNamespace == "" {
		c.LeaderElectionNamespace = c.SystemNamespace
	}
	return c, errors.Join(tlsErr, annotationsErr, c.validate())
}

// setRequestAnnotations reads key=value,key=value, and checks each key and
// value as the API server would.
func (c *Common) setRequestAnnotations(s string) error {
	var errs []error
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		key, value, ok := strings.Cut(pair, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("--certificate-request-annotations: %q is not key=value", pair))
			continue
		}
		for _, msg := range validation.IsQualifiedName(key) {
			errs = append(errs, fmt.Errorf("--certificate-request-annotations: key %q: %s", key, msg))
		}
		if c.CertificateRequestAnnotations == nil {
			c.CertificateRequestAnnotations = map[string]string{}
		}
		c.CertificateRequestAnnotations[key] = value
	}
	return errors.Join(errs...)
}

// applyEnv sets every flag that was not given on the command line from its
// environment variable, if that is set.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := EnvVar(f.Name)
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("invalid %s=%q (--%s): %w", name, v, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// EnvVar names the environment variable of a flag.
func EnvVar(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (c *Config) setTLSMinVersion(v string) error {
	switch v {
	case "1.2":
		c.TLSMinVersion = tls.VersionTLS12
	case "1.3":
		c.TLSMinVersion = tls.VersionTLS13
	default:
		return fmt.Errorf("invalid --tls-min-version %q: must be 1.2 or 1.3", v)
	}
	return nil
}

func (c Config) validate() error {
	var errs []error
	bad := func(flagName string, value any, why string) {
		errs = append(errs, fmt.Errorf("invalid --%s %q: %s", flagName, fmt.Sprint(value), why))
	}
	for _, ns := range c.DataplaneNamespaces {
		for _, msg := range validation.IsDNS1123Label(ns) {
			bad("dataplane-namespaces", ns, msg)
		}
	}
	if c.LeaderElectionNamespace != c.SystemNamespace {
		for _, msg := range validation.IsDNS1123Label(c.LeaderElectionNamespace) {
			bad("leader-election-namespace", c.LeaderElectionNamespace, msg)
		}
	}
	for _, msg := range validation.IsDNS1123Subdomain(c.LeaderElectionID) {
		bad("leader-election-id", c.LeaderElectionID, msg)
	}
	if c.WebhookPort < 1 || c.WebhookPort > 65535 {
		bad("webhook-port", c.WebhookPort, "must be between 1 and 65535")
	}
	if c.WebhookEnabled && c.CertDir == "" {
		bad("webhook-cert-dir", c.CertDir, "must be set when the webhook is enabled")
	}
	if c.ApproveAgentsOf != "" {
		ns, name, _ := strings.Cut(c.ApproveAgentsOf, "/")
		if msgs := append(validation.IsDNS1123Label(ns), validation.IsDNS1123Subdomain(name)...); len(msgs) > 0 {
			bad("approve-agents-of", c.ApproveAgentsOf, "must be <namespace>/<service account>: "+strings.Join(msgs, "; "))
		}
	}
	if !c.WebhookEnabled && !c.ReconcilerEnabled && c.ApproveAgentsOf == "" {
		errs = append(errs, errors.New("--enable-webhook and --enable-reconciler are both false and --approve-agents-of is empty: there is nothing to run"))
	}
	c.validateShared(bad)
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{{"sync-period", c.SyncPeriod}, {"switch-window", c.SwitchWindow}} {
		if d.value <= 0 {
			bad(d.flag, d.value, "must be positive")
		}
	}
	if c.LeaderElect && !(c.RetryPeriod < c.RenewDeadline && c.RenewDeadline < c.LeaseDuration) {
		errs = append(errs, fmt.Errorf("invalid leader election timing: want --leader-election-retry-period (%s) < --leader-election-renew-deadline (%s) < --leader-election-lease-duration (%s)", c.RetryPeriod, c.RenewDeadline, c.LeaseDuration))
	}
	if c.WebhookDrain < 0 || c.WebhookDrain >= c.ShutdownTimeout {
		bad("webhook-drain-period", c.WebhookDrain, "must be between 0 and --shutdown-timeout")
	}
	if c.ShutdownTimeout < 0 {
		bad("shutdown-timeout", c.ShutdownTimeout, "must not be negative")
	}
	return errors.Join(errs...)
}

func validateBindAddress(addr string) error {
	if addr == "0" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New(`must be host:port, :port, or 0 to turn it off`)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("the port must be a number between 0 and 65535")
	}
	return nil
}
