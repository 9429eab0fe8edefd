// Command meshcert serves the Mesh admission webhooks for cert-manager mTLS
// backends.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/meshcert/meshcert/app"
	"github.com/meshcert/meshcert/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	cfg, err := config.Parse(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, config.ErrHelp) {
		os.Exit(0)
	}
	if cfg.ShowVersion {
		fmt.Println(version)
		return
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(os.Stderr, "meshcert: %s\n", line)
		}
		os.Exit(2)
	}
	logger := zap.New(app.LogOptions(cfg)...)
	ctrl.SetLogger(logger)
	// client-go (leader election among others) logs through klog: same format.
	klog.SetLogger(logger.WithName("client-go"))
	ctrl.Log.Info("meshcert", "version", version)

	restConfig, err := kubeconfig(cfg.Kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshcert: loading the kubeconfig: %v\n", err)
		os.Exit(1)
	}
	if err := app.Run(ctrl.SetupSignalHandler(), cfg, restConfig); err != nil {
		ctrl.Log.Error(err, "meshcert stopped")
		os.Exit(1)
	}
}

func kubeconfig(path string) (*rest.Config, error) {
	if path != "" {
		return clientcmd.BuildConfigFromFlags("", path)
	}
	return ctrl.GetConfig()
}
