package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshcert/meshcert/internal/kuma"
)

// The attestors of the node agent.
const (
	AttestorKubernetes = "kubernetes"
	AttestorUnix       = "unix"
)

// AgentConfig is the node agent's configuration (meshcert agent), with
// what it shares with the controller in Common.
type AgentConfig struct {
	Common
	// NodeName is the node the agent serves: its pods, its requests.
	NodeName string
	// Socket is the Unix socket of SDS and the Workload API.
	Socket string
	// Attestor tells who a caller is: kubernetes (its pod) or unix (its
	// user, for VMs and a local run).
	Attestor string
	// ProcRoot is the proc filesystem the caller's process is read from.
	ProcRoot string
	// KubeletCgroupRoot is the kubelet's --cgroup-root: a caller's cgroup
	// names a pod only under it.
	KubeletCgroupRoot string
	// AttestationWait is how long a caller's pod, container or Dataplane
	// may take to appear before the caller is refused.
	AttestationWait time.Duration
	// MaxRequestBytes, MaxStreamsPerConnection, MaxCallsPerCaller and
	// MaxResourceNames bound what one caller can make the agent do.
	MaxRequestBytes         int
	MaxStreamsPerConnection int
	MaxCallsPerCaller       int
	MaxResourceNames        int
	// MaxConnections and MaxConnectionsPerCaller bound the connections open
	// at once, in all and of one caller.
	MaxConnections          int
	MaxConnectionsPerCaller int
}

// DefaultAgentSocket is where the agent serves: the file name is the one
// Kuma's injector expects (spire.socketFileName, "socket").
const DefaultAgentSocket = "/run/meshcert/sockets/socket"

// ParseAgent reads the agent's configuration from args (after "agent") and
// the environment, as Parse does.
func ParseAgent(args []string, getenv func(string) string, output io.Writer) (AgentConfig, error) {
	var c AgentConfig
	fs := flag.NewFlagSet("meshcert agent", flag.ContinueOnError)
	fs.SetOutput(output)
	c.addSharedFlags(fs)
	fs.StringVar(&c.SystemNamespace, "system-namespace", "kong-mesh-system", "The mesh's system namespace: where MeshIdentities, MeshTrusts and CertificateRequests live (kuma-system for Kuma).")
	fs.StringVar(&c.Zone, "zone", "default", "The control plane's zone: the .Zone of a trust domain when the Dataplane has no kuma.io/zone label.")
	fs.StringVar(&c.NodeName, "node-name", "", "The node this agent serves (in a DaemonSet, from spec.nodeName). Required.")
	fs.StringVar(&c.Socket, "socket", DefaultAgentSocket, "Unix socket of Envoy's SDS and the SPIFFE Workload API.")
	fs.StringVar(&c.Attestor, "attestor", AttestorKubernetes, "How a caller is known: kubernetes (its pod, from its cgroup) or unix (its user, matched to the Dataplane annotated meshcert.io/unix-uid and meshcert.io/node-name=<node-name>; for VMs and a local run).")
	fs.StringVar(&c.ProcRoot, "proc-root", "/proc", "The proc filesystem of the node's processes (the agent runs with hostPID).")
	fs.StringVar(&c.KubeletCgroupRoot, "kubelet-cgroup-root", "/", "The kubelet's --cgroup-root (cgroupRoot), as the agent reads cgroup paths: a caller is in a pod only where the kubelet puts pods, under <root>/kubepods (the systemd driver's slices named after it). /kubelet on kind's nodes.")
	fs.DurationVar(&c.AttestationWait, "attestation-wait", 10*time.Second, "How long a caller's pod, its container in the pod's status, and its Dataplane may take to appear before the caller is refused (kubernetes attestor). A workload often starts before the kubelet reports its container and before Kuma writes its Dataplane; waiting spares it a refusal and its client's backoff.")
	fs.IntVar(&c.MaxRequestBytes, "max-request-bytes", 64<<10, "The largest request read from a workload, in bytes; a larger one is refused (ResourceExhausted) unread. An SDS request is a few hundred bytes.")
	fs.IntVar(&c.MaxStreamsPerConnection, "max-streams-per-connection", 100, "Calls open at once on one connection (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS); a gRPC client queues more. Envoy opens one SDS stream per secret, two for Kuma's Spire identity.")
	fs.IntVar(&c.MaxCallsPerCaller, "max-calls-per-caller", 32, "Calls one caller keeps open at once over all its connections; more are refused (ResourceExhausted). A caller is a process with the kubernetes attestor, a Unix user with the unix attestor.")
	fs.IntVar(&c.MaxConnections, "max-connections", 2048, "Connections open at once from all workloads; one more is closed at its handshake. Each holds about 50 KiB of buffers and goroutines before it makes a call.")
	fs.IntVar(&c.MaxConnectionsPerCaller, "max-connections-per-caller", 64, "Connections one caller keeps open at once; one more is closed at its handshake. A caller is a process with the kubernetes attestor, a Unix user with the unix attestor, which may run many workloads. Envoy holds one.")
	fs.IntVar(&c.MaxResourceNames, "max-resource-names", 64, "Secret names one SDS request may hold; more are refused (InvalidArgument). Names asked for twice are served once.")
	fs.StringVar(&c.KeyAlgorithm, "key-algorithm", "ecdsa-p256", "Private key of identities, unless a MeshIdentity's meshcert.io/key-algorithm annotation says otherwise: "+strings.Join(kuma.KeyAlgorithms, ", ")+".")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", 10*time.Second, "How long to wait for a CertificateRequest to be signed.")
	fs.IntVar(&c.Workers, "workers", 10, "Identities issued in parallel.")
	fs.IntVar(&c.MaxInFlight, "max-requests-in-flight", 20, "CertificateRequests this agent keeps open at once; more identities wait their turn. Every node's agent adds its own to the signer's queue, which must drain within --request-timeout. 0 is no limit.")
	var requestAnnotations string
	fs.StringVar(&requestAnnotations, "certificate-request-annotations", "", "Annotations added to every CertificateRequest, as key=value pairs separated by commas.")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", "0", "Address of the Prometheus metrics endpoint; 0 (the default) turns it off.")
	fs.StringVar(&c.ProbeAddr, "health-probe-bind-address", ":8082", "Address of the /healthz and /readyz endpoints; 0 turns them off.")
	fs.IntVar(&c.LogLevel, "log-level", 0, "Log verbosity: 0 logs decisions and problems, 1 every identity and why a caller was refused, 2 and up more detail.")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q: meshcert agent takes only flags", fs.Arg(0))
	}
	if err := applyEnv(fs, getenv); err != nil {
		return c, err
	}
	return c, errors.Join(c.setRequestAnnotations(requestAnnotations), c.validateAgent())
}

func (c AgentConfig) validateAgent() error {
	var errs []error
	bad := func(flagName string, value any, why string) {
		errs = append(errs, fmt.Errorf("invalid --%s %q: %s", flagName, fmt.Sprint(value), why))
	}
	if c.NodeName == "" {
		errs = append(errs, fmt.Errorf("--node-name is required (or %s): the node whose workloads this agent serves", EnvVar("node-name")))
	}
	for _, msg := range validation.IsDNS1123Subdomain(c.NodeName) {
		if c.NodeName != "" {
			bad("node-name", c.NodeName, msg)
		}
	}
	if !filepath.IsAbs(c.Socket) {
		bad("socket", c.Socket, "must be an absolute path")
	}
	if !filepath.IsAbs(c.ProcRoot) {
		bad("proc-root", c.ProcRoot, "must be an absolute path")
	}
	if root := c.KubeletCgroupRoot; !strings.HasPrefix(root, "/") || path.Clean(root) != root || slices.Contains(strings.Split(root, "/"), "..") {
		bad("kubelet-cgroup-root", root, "must be an absolute, clean cgroup path, such as / or /kubelet")
	}
	for _, limit := range []struct {
		flag  string
		value int
	}{
		{"max-request-bytes", c.MaxRequestBytes}, {"max-streams-per-connection", c.MaxStreamsPerConnection},
		{"max-calls-per-caller", c.MaxCallsPerCaller}, {"max-resource-names", c.MaxResourceNames},
		{"max-connections", c.MaxConnections}, {"max-connections-per-caller", c.MaxConnectionsPerCaller},
	} {
		if limit.value <= 0 {
			bad(limit.flag, limit.value, "must be positive")
		}
	}
	if c.MaxStreamsPerConnection > math.MaxUint32 {
		bad("max-streams-per-connection", c.MaxStreamsPerConnection, "must fit HTTP/2's 32 bits")
	}
	if c.AttestationWait < 0 || c.AttestationWait > time.Minute {
		bad("attestation-wait", c.AttestationWait, "must be between 0 and 1m")
	}
	if c.Attestor != AttestorKubernetes && c.Attestor != AttestorUnix {
		bad("attestor", c.Attestor, "must be kubernetes or unix")
	}
	c.validateShared(bad)
	return errors.Join(errs...)
}
