package config

import (
	"flag"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshcert/meshcert/internal/kuma"
)

// Common is what the controller and the agent share: the cluster and the
// client to it, the issuance, the endpoints and the logs. Config and
// AgentConfig each embed it; each gives the flags whose defaults or words
// differ between them.
type Common struct {
	Kubeconfig      string
	SystemNamespace string
	// Zone is the control plane's zone, the .Zone of a MeshIdentity's trust
	// domain that has no kuma.io/zone label.
	Zone string
	// CertificateRequestAnnotations are added to every CertificateRequest,
	// for the policies of external issuers that read them.
	CertificateRequestAnnotations map[string]string

	KeyAlgorithm   string
	RequestTimeout time.Duration
	Workers        int
	MaxInFlight    int
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	KubeAPIQPS     float64
	KubeAPIBurst   int

	MetricsAddr string
	ProbeAddr   string
	PprofAddr   string

	Dev      bool
	LogLevel int
}

// addSharedFlags adds the flags both commands give in the same words and
// with the same defaults.
func (c *Common) addSharedFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Default: in-cluster config, then $KUBECONFIG, then ~/.kube/config.")
	fs.DurationVar(&c.BackoffInitial, "backoff-initial", 5*time.Second, "Wait after a failed issuance; it doubles with each failure.")
	fs.DurationVar(&c.BackoffMax, "backoff-max", 5*time.Minute, "Longest wait between failed issuances.")
	fs.Float64Var(&c.KubeAPIQPS, "kube-api-qps", -1, "Client-side limit of API requests per second; -1 leaves rate limiting to the API server's priority and fairness.")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", 0, "Burst of the client-side limit, when --kube-api-qps is positive. Default: twice the QPS.")
	fs.StringVar(&c.PprofAddr, "pprof-bind-address", "0", "Address of Go's pprof endpoints, for profiling; 0 (the default) turns them off.")
	fs.BoolVar(&c.Dev, "dev", false, "Human-readable console logs instead of JSON.")
}

// validateShared checks what the controller and the agent share: the cluster's
// names, the issuance settings, the client, the endpoints and the logs.
func (c Common) validateShared(bad func(flagName string, value any, why string)) {
	for _, msg := range validation.IsDNS1123Label(c.Zone) {
		bad("zone", c.Zone, msg)
	}
	for _, msg := range validation.IsDNS1123Label(c.SystemNamespace) {
		bad("system-namespace", c.SystemNamespace, msg)
	}
	if !slices.Contains(kuma.KeyAlgorithms, c.KeyAlgorithm) {
		bad("key-algorithm", c.KeyAlgorithm, "must be one of "+strings.Join(kuma.KeyAlgorithms, ", "))
	}
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{{"request-timeout", c.RequestTimeout}, {"backoff-initial", c.BackoffInitial}, {"backoff-max", c.BackoffMax}} {
		if d.value <= 0 {
			bad(d.flag, d.value, "must be positive")
		}
	}
	if c.BackoffMax < c.BackoffInitial {
		bad("backoff-max", c.BackoffMax, "must not be shorter than --backoff-initial")
	}
	if c.Workers < 1 {
		bad("workers", c.Workers, "must be at least 1")
	}
	if c.MaxInFlight < 0 {
		bad("max-requests-in-flight", c.MaxInFlight, "must not be negative; 0 is no limit")
	}
	if c.KubeAPIQPS == 0 || c.KubeAPIQPS < -1 {
		bad("kube-api-qps", c.KubeAPIQPS, "must be positive, or -1 for no client-side limit")
	}
	if c.KubeAPIBurst < 0 {
		bad("kube-api-burst", c.KubeAPIBurst, "must not be negative")
	}
	for _, a := range []struct{ flag, value string }{{"metrics-bind-address", c.MetricsAddr}, {"health-probe-bind-address", c.ProbeAddr}, {"pprof-bind-address", c.PprofAddr}} {
		if err := validateBindAddress(a.value); err != nil {
			bad(a.flag, a.value, err.Error())
		}
	}
	if c.LogLevel < 0 {
		bad("log-level", c.LogLevel, "must not be negative")
	}
}
