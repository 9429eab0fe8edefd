package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// agentCacheOptions keep what an agent caches to its own node: its node's
// Pods and its own CertificateRequests. MeshIdentities and MeshTrusts are few
// and cached whole. Dataplanes are read one by one, never cached, but by the
// unix attestor, which is for VMs and a laptop.
func agentCacheOptions(cfg config.AgentConfig) cache.Options {
	system := map[string]cache.Config{cfg.SystemNamespace: {}}
	opts := cache.Options{
		ReaderFailOnMissingInformer: true,
		DefaultTransform:            cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName)},
			&cmapi.CertificateRequest{}: {Namespaces: system, Label: labels.SelectorFromSet(labels.Set{
				kuma.ManagedByLabel: kuma.ManagedByValue, agent.NodeLabel: kuma.LabelValue(cfg.NodeName),
			})},
			&kuma.MeshIdentityResource{}: {Namespaces: system},
			&kuma.MeshTrustResource{}:    {Namespaces: system},
		},
	}
	if cfg.Attestor == config.AttestorUnix {
		// On VMs and a laptop, where Dataplanes are few.
		opts.ByObject[&kuma.DataplaneResource{}] = cache.ByObject{Transform: trimDataplanes}
	}
	return opts
}

// RunAgent runs the node agent until ctx is done.
func RunAgent(ctx context.Context, cfg config.AgentConfig, restConfig *rest.Config, opts ...ManagerOption) error {
	log := ctrl.Log.WithName("agent")
	restConfig = clientLimits(restConfig, cfg.Common)
	mgrOpts := ctrl.Options{
		Scheme:                 Scheme(),
		Cache:                  agentCacheOptions(cfg),
		Metrics:                metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress: cfg.ProbeAddr,
		PprofBindAddress:       cfg.PprofAddr,
	}
	for _, o := range opts {
		o(&mgrOpts)
	}
	mgr, err := ctrl.NewManager(restConfig, mgrOpts)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	// Informers the agent reads from before any controller asks for them.
	for _, obj := range []client.Object{&kuma.MeshIdentityResource{}, &kuma.MeshTrustResource{}} {
		if _, err := mgr.GetCache().GetInformer(ctx, obj); err != nil {
			return fmt.Errorf("watching %T (are Kuma's MeshIdentity and MeshTrust CRDs installed?): %w", obj, err)
		}
	}
	if err := issuance.IndexRequests(ctx, mgr.GetFieldIndexer()); err != nil {
		return err
	}

	procfs := attest.Procfs{Root: cfg.ProcRoot, KubeletCgroupRoot: cfg.KubeletCgroupRoot}
	var attestor agent.Attestor
	limits := agent.Limits{
		MaxRequestBytes: cfg.MaxRequestBytes, MaxStreamsPerConnection: uint32(cfg.MaxStreamsPerConnection),
		MaxCallsPerCaller: cfg.MaxCallsPerCaller, MaxResourceNames: cfg.MaxResourceNames, CallerOf: agent.ByProcess,
		MaxConnections: cfg.MaxConnections, MaxConnectionsPerCaller: cfg.MaxConnectionsPerCaller,
	}
	switch cfg.Attestor {
	case config.AttestorUnix:
		if err := agent.IndexUnixUIDs(ctx, mgr.GetFieldIndexer()); err != nil {
			return err
		}
		attestor = &agent.UnixAttestor{Dataplanes: mgr.GetCache(), Node: cfg.NodeName}
		limits.CallerOf = agent.ByUser
	default:
		if err := agent.IndexPodUIDs(ctx, mgr.GetFieldIndexer()); err != nil {
			return err
		}
		attestor = &agent.PodAttestor{Procfs: procfs, Pods: mgr.GetCache(), Dataplanes: agent.SharedReads(mgr.GetAPIReader()), Wait: cfg.AttestationWait}
	}
	updates := agent.NewUpdates()
	bundles := &agent.Bundles{Cache: mgr.GetCache(), SystemNamespace: cfg.SystemNamespace}
	if err := bundles.Watch(ctx, mgr, updates); err != nil {
		return err
	}
	var workloads client.Object = &corev1.Pod{}
	if cfg.Attestor == config.AttestorUnix {
		workloads = &kuma.DataplaneResource{}
	}
	if err := updates.WatchEntitlement(ctx, mgr.GetCache(), workloads); err != nil {
		return err
	}
	svids := agent.NewSVIDs(agent.SVIDOptions{
		Client:          mgr.GetClient(),
		SystemNamespace: cfg.SystemNamespace,
		Node:            cfg.NodeName,
		Recorder:        mgr.GetEventRecorder("meshcert-agent"),
		Clock:           clock.RealClock{},
		RequestTimeout:  cfg.RequestTimeout,
		MaxInFlight:     cfg.MaxInFlight,
		Backoff:         backoffPolicy(cfg.Common),
		Annotations:     cfg.CertificateRequestAnnotations,
		Bundles:         bundles,
		Updates:         updates,
	})
	if err := svids.SetupWithManager(mgr, cfg.Workers); err != nil {
		return err
	}
	server := &agent.Server{
		Resolver: &agent.Resolver{
			Attestor: attestor, Cache: mgr.GetCache(), SystemNamespace: cfg.SystemNamespace,
			Zone: cfg.Zone, KeyAlgorithm: issuance.KeyAlgorithm(cfg.KeyAlgorithm), Procfs: procfs,
		},
		SVIDs: svids, Bundles: bundles, Updates: updates, Limits: limits, Log: log,
	}
	serving := make(chan struct{})
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return server.Serve(ctx, cfg.Socket, serving)
	})); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("socket", func(*http.Request) error {
		select {
		case <-serving:
			return nil
		default:
			return errors.New("the socket is not served yet")
		}
	}); err != nil {
		return err
	}
	log.Info("Starting the node agent", "node", cfg.NodeName, "socket", cfg.Socket, "attestor", cfg.Attestor)
	return mgr.Start(ctx)
}
