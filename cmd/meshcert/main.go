// Command meshcert runs meshcert: the admission webhooks and the reconciler
// (no subcommand), the node agent (meshcert agent), and a Workload API
// client that fetches the caller's identity from an agent (meshcert fetch).
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
