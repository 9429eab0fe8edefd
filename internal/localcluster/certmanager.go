package localcluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	cmcontroller "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	// Each controller registers itself in cmcontroller.Known() when imported.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// The CA issuer type; without it the issuers controller retries forever
	// with "issuer 'ca' not registered".
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
)

// The cert-manager controllers a CA issuer needs: issuer readiness, the
// default approver, and the CA signer of CertificateRequests.
var certManagerControllers = []string{
	"issuers",
	"clusterissuers",
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
}

// CertManagerOptions configures cert-manager's in-process controllers.
type CertManagerOptions struct {
	// ClusterResourceNamespace holds the Secrets of ClusterIssuers.
	ClusterResourceNamespace string
	// Controllers to run; default: the four a CA issuer needs.
	Controllers []string
	// Workers per controller; default 20, cert-manager's own.
	Workers int
	// Log receives cert-manager's logs; default: discarded.
	Log logr.Logger
}

// CertManager is cert-manager's real controllers, running in this process.
type CertManager struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartCertManager starts cert-manager's controllers against the cluster.
func (c *Cluster) StartCertManager(ctx context.Context, opts CertManagerOptions) (*CertManager, error) {
	if opts.Controllers == nil {
		opts.Controllers = certManagerControllers
	}
	if opts.Workers == 0 {
		opts.Workers = 20
	}
	if opts.Log.GetSink() == nil {
		opts.Log = logr.Discard()
	}
	// cert-manager logs through klog; route it away from the test output.
	klog.SetLogger(opts.Log)
	ctx, cancel := context.WithCancel(logr.NewContext(ctx, opts.Log))
	factory, err := cmcontroller.NewContextFactory(ctx, cmcontroller.ContextOptions{
		Kubeconfig: c.Kubeconfig,
		IssuerOptions: cmcontroller.IssuerOptions{
			ClusterResourceNamespace: opts.ClusterResourceNamespace,
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("building cert-manager's controller context: %w", err)
	}
	// Construct every controller first: informers only start if they exist
	// when the factories are started.
	var controllers []cmcontroller.Interface
	for _, name := range opts.Controllers {
		ctor, ok := cmcontroller.Known()[name]
		if !ok {
			cancel()
			return nil, fmt.Errorf("cert-manager controller %q is not registered", name)
		}
		ctrl, err := ctor(factory)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("constructing cert-manager controller %q: %w", name, err)
		}
		controllers = append(controllers, ctrl)
	}
	shared, err := factory.Build()
	if err != nil {
		cancel()
		return nil, err
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	cm := &CertManager{cancel: cancel}
	for i, ctrl := range controllers {
		cm.wg.Add(1)
		go func() {
			defer cm.wg.Done()
			if err := ctrl.Run(opts.Workers, ctx); err != nil {
				opts.Log.Error(err, "cert-manager controller stopped", "controller", opts.Controllers[i])
			}
		}()
	}
	return cm, nil
}

// Stop stops the controllers and waits, up to half a minute, for them to
// return: a worker may be deep in an API call when its context ends.
func (cm *CertManager) Stop() {
	cm.cancel()
	done := make(chan struct{})
	go func() { cm.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}
