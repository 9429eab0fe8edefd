// Package app assembles meshcert from its parts: the manager, its caches, the
// admission webhooks and the probes. cmd/meshcert and the local runner both
// start meshcert through Run, so they share one code path.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/controller/approval"
	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/controller/meshidentity"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/webhook"
)

// Scheme holds every type meshcert reads or writes.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(cmapi.AddToScheme(s))
	utilruntime.Must(kuma.AddToScheme(s))
	return s
}

// cacheOptions limits what is cached, so memory stays flat however many
// Secrets the cluster holds: the system namespace's Secrets and Issuers, the
// Dataplanes of the dataplane namespaces, and there only the Secrets
// meshcert made, as its CertificateRequests. Reading anything else from the
// cache fails instead of quietly caching it all.
func cacheOptions(cfg config.Config) cache.Options {
	system := map[string]cache.Config{cfg.SystemNamespace: {}}
	managed := labels.SelectorFromSet(labels.Set{kuma.ManagedByLabel: kuma.ManagedByValue})
	dataplanes := map[string]cache.Config{}
	secrets := map[string]cache.Config{cfg.SystemNamespace: {}}
	if len(cfg.DataplaneNamespaces) == 0 {
		dataplanes[cache.AllNamespaces] = cache.Config{}
		secrets[cache.AllNamespaces] = cache.Config{LabelSelector: managed}
	}
	for _, ns := range cfg.DataplaneNamespaces {
		dataplanes[ns] = cache.Config{}
		if ns != cfg.SystemNamespace {
			secrets[ns] = cache.Config{LabelSelector: managed}
		}
	}
	return cache.Options{
		SyncPeriod:                  &cfg.SyncPeriod,
		ReaderFailOnMissingInformer: true,
		DefaultTransform:            cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}:            {Namespaces: secrets, Transform: compactSecrets(&dataplane.SecretCompactor{})},
			&kuma.DataplaneResource{}:   {Namespaces: dataplanes, Transform: trimDataplanes},
			&cmapi.Issuer{}:             {Namespaces: system},
			&cmapi.CertificateRequest{}: {Namespaces: system, Label: managed},
			// The published trust bundles.
			&corev1.ConfigMap{}: {Namespaces: system, Label: managed},
			// Kuma admits MeshIdentities and MeshTrusts in the system namespace only.
			&kuma.MeshIdentityResource{}: {Namespaces: system},
			&kuma.MeshTrustResource{}:    {Namespaces: system},
		},
	}
}

// trimDataplanes is the Dataplanes' cache transform: of a Dataplane it keeps
// the metadata and the tags, which is what meshcert reads, and drops the
// rest of the spec and kubectl's copy of the last applied object, so that
// the cache of a large mesh holds little more than its identities.
var trimDataplanes = stripThen(func(dp *kuma.DataplaneResource) {
	dp.Spec = kuma.TrimDataplaneSpec(dp.Spec)
	delete(dp.Annotations, corev1.LastAppliedConfigAnnotation)
})

// compactSecrets is the Secrets' cache transform: the Secrets meshcert
// delivered are cached compacted (dataplane.SecretCompactor), Kuma's mesh
// Secrets (a backend's caCert) whole, and any other Secret, such as an
// Issuer's CA key pair, as its name and type alone, which is all meshcert
// reads of it: the cache never holds a key meshcert did not make.
func compactSecrets(c *dataplane.SecretCompactor) toolscache.TransformFunc {
	return stripThen(func(s *corev1.Secret) {
		c.Compact(s)
		switch {
		case dataplane.IsDelivered(s):
		case s.Type == kuma.MeshSecretType:
			delete(s.Annotations, corev1.LastAppliedConfigAnnotation)
		default:
			// kubectl apply keeps a copy of the data in an annotation.
			s.Data, s.StringData, s.Annotations = nil, nil, nil
		}
	})
}

// stripThen is a cache transform that strips the managed fields, as from
// every cached object, and then trims the objects of type T in place.
func stripThen[T any](trim func(T)) toolscache.TransformFunc {
	return func(obj any) (any, error) {
		obj, err := cache.TransformStripManagedFields()(obj)
		if o, ok := obj.(T); ok {
			trim(o)
		}
		return obj, err
	}
}

// clientLimits applies the client-side rate limit of the configuration to a
// copy of restConfig.
func clientLimits(restConfig *rest.Config, cfg config.Common) *rest.Config {
	restConfig = rest.CopyConfig(restConfig)
	restConfig.QPS = float32(cfg.KubeAPIQPS)
	restConfig.Burst = cfg.KubeAPIBurst
	if restConfig.Burst == 0 && cfg.KubeAPIQPS > 0 {
		restConfig.Burst = int(2 * cfg.KubeAPIQPS)
	}
	return restConfig
}

// backoffPolicy is the one retry policy of every issuer and controller of a
// process, from its --backoff-initial and --backoff-max.
func backoffPolicy(c config.Common) issuance.BackoffPolicy {
	return issuance.BackoffPolicy{Initial: c.BackoffInitial, Max: c.BackoffMax}
}

// ManagerOption changes the options of the controller manager that Run or
// RunAgent builds, for a caller that runs meshcert inside a process of its
// own, such as the local runner.
type ManagerOption func(*ctrl.Options)

// Run starts meshcert and blocks until ctx is done, then shuts down gracefully.
func Run(ctx context.Context, cfg config.Config, restConfig *rest.Config, opts ...ManagerOption) error {
	log := ctrl.Log.WithName("setup")
	restConfig = clientLimits(restConfig, cfg.Common)
	webhookServer := webhook.NewServer(webhook.ServerOptions{
		Host:          cfg.WebhookHost,
		Port:          cfg.WebhookPort,
		CertDir:       cfg.CertDir,
		CertName:      cfg.CertName,
		KeyName:       cfg.KeyName,
		TLSMinVersion: cfg.TLSMinVersion,
		EnableHTTP2:   cfg.EnableHTTP2,
		Drain:         cfg.WebhookDrain,
	})
	mgrOpts := ctrl.Options{
		Scheme: Scheme(),
		Cache:  cacheOptions(cfg),
		Metrics: metricsserver.Options{
			BindAddress: cfg.MetricsAddr,
			TLSOpts:     webhook.TLSOptions(cfg.TLSMinVersion, cfg.EnableHTTP2),
		},
		HealthProbeBindAddress:        cfg.ProbeAddr,
		PprofBindAddress:              cfg.PprofAddr,
		WebhookServer:                 webhookServer,
		LeaderElection:                cfg.LeaderElect,
		LeaderElectionID:              cfg.LeaderElectionID,
		LeaderElectionNamespace:       cfg.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &cfg.LeaseDuration,
		RenewDeadline:                 &cfg.RenewDeadline,
		RetryPeriod:                   &cfg.RetryPeriod,
		GracefulShutdownTimeout:       &cfg.ShutdownTimeout,
	}
	for _, o := range opts {
		o(&mgrOpts)
	}
	mgr, err := ctrl.NewManager(restConfig, mgrOpts)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}

	// What both halves look up, kept current by the informers' events.
	index, err := lookup.NewIndex(ctx, mgr.GetCache(), cfg.SystemNamespace)
	if err != nil {
		return fmt.Errorf("watching Secrets and issuers (are cert-manager's CRDs installed?): %w", err)
	}
	if err := mgr.AddReadyzCheck("lookup-index", func(*http.Request) error {
		if !index.HasSynced() {
			return errors.New("the lookup index has not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	if cfg.WebhookEnabled {
		webhook.Register(mgr, webhook.RegisterOptions{
			SystemNamespace:     cfg.SystemNamespace,
			Zone:                cfg.Zone,
			AllowUnsafeCASwitch: cfg.AllowUnsafeCASwitch,
			Lookup:              index,
		})
		if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("draining", webhookServer.DrainingChecker()); err != nil {
			return err
		}
	}
	if cfg.ReconcilerEnabled {
		// Finding an owner's requests must not scan them all: thousands are
		// open at once while a large mesh is issued.
		if err := issuance.IndexRequests(ctx, mgr.GetFieldIndexer()); err != nil {
			return err
		}
		r := dataplane.New(dataplane.Options{
			Client:              mgr.GetClient(),
			APIReader:           mgr.GetAPIReader(),
			Lookup:              index,
			Recorder:            mgr.GetEventRecorder("meshcert"),
			Clock:               clock.RealClock{},
			SystemNamespace:     cfg.SystemNamespace,
			KeyAlgorithm:        issuance.KeyAlgorithm(cfg.KeyAlgorithm),
			RequestTimeout:      cfg.RequestTimeout,
			KeepRequests:        cfg.KeepRequests,
			Backoff:             backoffPolicy(cfg.Common),
			SwitchWindow:        cfg.SwitchWindow,
			MaxInFlight:         cfg.MaxInFlight,
			RequestAnnotations:  cfg.CertificateRequestAnnotations,
			PublishTrustBundles: cfg.PublishTrustBundles,
		})
		if err := r.SetupWithManager(ctx, mgr, cfg.Workers); err != nil {
			return fmt.Errorf("setting up the reconciler: %w", err)
		}
		if meshidentity.Installed(mgr.GetRESTMapper()) {
			mt := meshidentity.New(meshidentity.Options{
				Client:             mgr.GetClient(),
				Lookup:             index,
				Recorder:           mgr.GetEventRecorder("meshcert"),
				Clock:              clock.RealClock{},
				SystemNamespace:    cfg.SystemNamespace,
				Zone:               cfg.Zone,
				KeyAlgorithm:       issuance.KeyAlgorithm(cfg.KeyAlgorithm),
				RequestTimeout:     cfg.RequestTimeout,
				Backoff:            backoffPolicy(cfg.Common),
				RequestAnnotations: cfg.CertificateRequestAnnotations,
			})
			if err := mt.SetupWithManager(mgr); err != nil {
				return fmt.Errorf("setting up the MeshTrust reconciler: %w", err)
			}
		} else {
			log.Info("Kuma's MeshIdentity and MeshTrust are not installed: no MeshTrust is kept")
		}
		// The inventory's gauges come from the leader alone, as its
		// certificates do, and leave with this run.
		inventory := &exportedCollector{collector: index.Inventory()}
		defer inventory.unregister()
		go func() {
			select {
			case <-mgr.Elected():
				// A run of meshcert before this one in the process may not
				// have let go of them yet: try again until it has.
				err := wait.PollUntilContextCancel(ctx, time.Second, true, func(context.Context) (bool, error) {
					return inventory.register() == nil, nil
				})
				if err != nil && ctx.Err() == nil {
					log.Error(err, "Cannot export the inventory's gauges")
				}
			case <-ctx.Done():
			}
		}()
	}
	// The agents' approver runs beside the webhook or the reconciler, and
	// only on the leader.
	if cfg.ApproveAgentsOf != "" {
		ns, name, _ := strings.Cut(cfg.ApproveAgentsOf, "/")
		a := &approval.Reconciler{
			Client: mgr.GetClient(), Live: mgr.GetAPIReader(), Identities: mgr.GetCache(),
			SystemNamespace: cfg.SystemNamespace, Zone: cfg.Zone,
			AgentUser: serviceaccount.MakeUsername(ns, name),
			Signers:   cfg.ApproveSigners, Mapper: mgr.GetRESTMapper(),
			Recorder: mgr.GetEventRecorder("meshcert"), Clock: clock.RealClock{},
		}
		if err := a.SetupWithManager(ctx, mgr, cfg.Workers); err != nil {
			return fmt.Errorf("setting up the agents' approver: %w", err)
		}
	}
	if err := mgr.AddReadyzCheck("informers", cachesSynced(mgr)); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}

	log.Info("Starting meshcert", "systemNamespace", cfg.SystemNamespace, "webhook", cfg.WebhookEnabled, "reconciler", cfg.ReconcilerEnabled)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running the manager: %w", err)
	}
	return nil
}

// exportedCollector is a collector in controller-runtime's registry for as
// long as one run of meshcert lasts.
type exportedCollector struct {
	collector prometheus.Collector
	mu        sync.Mutex
	state     int // 0: never registered, 1: registered, 2: unregistered
}

func (e *exportedCollector) register() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != 0 {
		return nil
	}
	if err := metrics.Registry.Register(e.collector); err != nil {
		return err
	}
	e.state = 1
	return nil
}

// unregister removes the collector, and keeps a later register from adding it.
func (e *exportedCollector) unregister() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state == 1 {
		metrics.Registry.Unregister(e.collector)
	}
	e.state = 2
}

// cachesSynced is ready once every informer has synced.
func cachesSynced(mgr ctrl.Manager) healthz.Checker {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("informer caches have not synced")
		}
		return nil
	}
}
