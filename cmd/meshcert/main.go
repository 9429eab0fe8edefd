// Command meshcert runs meshcert: the admission webhooks and the reconciler
// (no subcommand), the node agent (meshcert agent), a Workload API client
// that fetches the caller's identity from an agent (meshcert fetch), and the
// checks of an install and its identities (meshcert check).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/internal/check"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "agent":
			runAgent(os.Args[2:])
			return
		case "fetch":
			fetch(os.Args[2:])
			return
		case "check":
			runCheck(os.Args[2:])
			return
		}
	}
	cfg, err := config.Parse(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, config.ErrHelp) {
		os.Exit(0)
	}
	if cfg.ShowVersion {
		fmt.Print(versionText(version, buildSettings()))
		return
	}
	exitOnConfigError(err)
	restConfig := setup(cfg.Common)
	if err := app.Run(ctrl.SetupSignalHandler(), cfg, restConfig); err != nil {
		ctrl.Log.Error(err, "meshcert stopped")
		os.Exit(1)
	}
}

func runAgent(args []string) {
	cfg, err := config.ParseAgent(args, os.Getenv, os.Stderr)
	if errors.Is(err, config.ErrHelp) {
		os.Exit(0)
	}
	exitOnConfigError(err)
	restConfig := setup(cfg.Common)
	if err := app.RunAgent(ctrl.SetupSignalHandler(), cfg, restConfig); err != nil {
		ctrl.Log.Error(err, "meshcert agent stopped")
		os.Exit(1)
	}
}

func fetch(args []string) {
	fs := flag.NewFlagSet("meshcert fetch", flag.ContinueOnError)
	socket := fs.String("socket", config.DefaultAgentSocket, "The agent's Unix socket.")
	write := fs.String("write", "", "Also write the SVID, its key and its trust bundle to this folder, as svid.0.pem, svid.0.key and bundle.0.pem.")
	timeout := fs.Duration("timeout", 30*time.Second, "How long to wait for the identity.")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := app.Fetch(ctx, *socket, *write, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "meshcert fetch: %v\n", err)
		os.Exit(1)
	}
}

// runCheck runs `meshcert check [workload <namespace>/<pod> | mesh <name>]`: exit status 0
// when no check failed (warnings do not fail), 1 when one did, 2 when the
// checks could not run.
func runCheck(args []string) {
	fs := flag.NewFlagSet("meshcert check", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: meshcert check [flags]\n       meshcert check workload <namespace>/<pod> [flags]\n       meshcert check mesh <name> [flags]\n\n"+
			"Checks meshcert's install and each identity it serves, why one pod has or has not an identity,\n"+
			"or one mesh's identities and backends and whether Mesh.spec.mtls can be removed.\n"+
			"Exit status: 0 when no check failed (warnings do not fail), 1 when one failed, 2 when the checks could not run.\n\n")
		fs.PrintDefaults()
	}
	var o check.Options
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "The kubeconfig file; by default $KUBECONFIG or ~/.kube/config, as kubectl.")
	fs.StringVar(&o.Context, "context", "", "The kubeconfig context to use.")
	for _, name := range []string{"n", "namespace"} {
		fs.StringVar(&o.Namespace, name, "kong-mesh-system", "The namespace of meshcert's release: its Deployment, webhook Service and agents.")
	}
	fs.StringVar(&o.SystemNamespace, "system-namespace", "", "The mesh's system namespace (kuma-system for Kuma); by default the release namespace, as the chart's.")
	fs.StringVar(&o.ClusterResourceNamespace, "cluster-resource-namespace", "cert-manager", "cert-manager's --cluster-resource-namespace, where the Secrets of ClusterIssuers are.")
	fs.StringVar(&o.Zone, "zone", "default", "The control plane's zone: the .Zone of a trust domain, as the agent's --zone.")
	for _, name := range []string{"o", "output"} {
		fs.StringVar(&o.Output, name, check.OutputText, "The output format: text or json.")
	}
	timeout := fs.Duration("timeout", time.Minute, "How long the checks may take.")
	named := func(what string) string {
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			fmt.Fprintf(os.Stderr, "meshcert check %s: name the %s\n", args[0], what)
			os.Exit(2)
		}
		name := args[1]
		args = args[2:]
		return name
	}
	switch {
	case len(args) > 0 && args[0] == "workload":
		o.Workload = named("pod as <namespace>/<pod>")
	case len(args) > 0 && args[0] == "mesh":
		o.Mesh = named("mesh")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "meshcert check: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	if o.SystemNamespace == "" {
		o.SystemNamespace = o.Namespace
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	report, err := check.Run(ctx, o, os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshcert check: %v\n", err)
		os.Exit(2)
	}
	if report.Failed() {
		os.Exit(1)
	}
}

func exitOnConfigError(err error) {
	if err == nil {
		return
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(os.Stderr, "meshcert: %s\n", line)
	}
	os.Exit(2)
}

// setup starts the logs and loads the kubeconfig.
func setup(cfg config.Common) *rest.Config {
	logger := zap.New(app.LogOptions(cfg)...)
	ctrl.SetLogger(logger)
	// client-go (leader election among others) logs through klog: same format.
	klog.SetLogger(logger.WithName("client-go"))
	ctrl.Log.Info("meshcert", "version", version, "gofips140", fipsBuild(buildSettings()), "fips140Mode", fipsMode())
	restConfig, err := kubeconfig(cfg.Kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshcert: loading the kubeconfig: %v\n", err)
		os.Exit(1)
	}
	return restConfig
}

func kubeconfig(path string) (*rest.Config, error) {
	if path != "" {
		return clientcmd.BuildConfigFromFlags("", path)
	}
	return ctrl.GetConfig()
}
