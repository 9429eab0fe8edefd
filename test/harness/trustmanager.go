package harness

import (
	"context"
	"fmt"
	"path/filepath"

	trustapi "github.com/cert-manager/trust-manager/pkg/apis/trust/v1alpha1"
	"github.com/cert-manager/trust-manager/pkg/bundle"
	"github.com/cert-manager/trust-manager/pkg/bundle/controller"
	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// StartTrustManager installs trust-manager's Bundle CRD and runs its own
// Bundle controller in this process, with trustNamespace as the namespace
// Bundles take their sources from, until ctx ends.
func StartTrustManager(ctx context.Context, c *localcluster.Cluster, trustNamespace string, logs logr.Logger) error {
	dir, err := localcluster.ModuleDir("github.com/cert-manager/trust-manager")
	if err != nil {
		return err
	}
	if err := installCRDFile(c, filepath.Join(dir, "deploy", "crds", "trust.cert-manager.io_bundles.yaml")); err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := trustapi.AddToScheme(scheme); err != nil {
		return err
	}
	opts := controller.Options{Namespace: trustNamespace}
	mgr, err := ctrl.NewManager(c.Config, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   bundle.CacheOpts(opts),
		Logger:  logs,
	})
	if err != nil {
		return fmt.Errorf("trust-manager's manager: %w", err)
	}
	ctx = log.IntoContext(ctx, logs)
	if err := bundle.SetupWithManager(ctx, mgr, opts); err != nil {
		return fmt.Errorf("trust-manager's Bundle controller: %w", err)
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			logs.Error(err, "trust-manager stopped")
		}
	}()
	return nil
}
