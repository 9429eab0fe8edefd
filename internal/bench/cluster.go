package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
)

const systemNamespace = "kong-mesh-system"

// env is a test cluster with cert-manager's controllers and a CA Issuer and
// ClusterIssuer named mesh-ca.
type env struct {
	c       *localcluster.Cluster
	cm      *localcluster.CertManager
	ca      *testpki.CA
	stopped bool
}

// newEnv starts a cluster with the given cert-manager controllers.
func newEnv(ctx context.Context, cluster localcluster.Options, controllers ...string) (_ *env, err error) {
	c, err := localcluster.Start(cluster)
	if err != nil {
		return nil, err
	}
	e := &env{c: c}
	defer func() {
		if err != nil {
			e.stop()
		}
	}()
	if err := c.InstallCRDs(); err != nil {
		return nil, err
	}
	if e.cm, err = c.StartCertManager(ctx, localcluster.CertManagerOptions{ClusterResourceNamespace: systemNamespace, Controllers: controllers}); err != nil {
		return nil, err
	}
	if err := localcluster.EnsureNamespace(ctx, c.Client, systemNamespace); err != nil {
		return nil, err
	}
	if e.ca, err = testpki.New("bench CA", time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour)); err != nil {
		return nil, err
	}
	if err := localcluster.CreateCAIssuers(ctx, c.Client, []localcluster.CAIssuer{
		{Name: "mesh-ca", Namespace: systemNamespace, SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: e.ca},
		{Name: "mesh-ca", SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: e.ca},
	}); err != nil {
		return nil, err
	}
	// The mesh Secret the documented example names as caCert.
	if err := c.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-ca", Namespace: systemNamespace, Labels: map[string]string{kuma.MeshLabel: "demo"}},
		Type:       kuma.MeshSecretType,
		Data:       map[string][]byte{kuma.SecretValueKey: e.ca.PEM},
	}); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) stop() {
	if e.stopped {
		return
	}
	e.stopped = true
	if e.cm != nil {
		e.cm.Stop()
	}
	_ = e.c.Stop()
}

// kumaDataplaneSpec is the spec of a Dataplane as Kuma's pod converter
// writes it for a sidecar of service svc in namespace ns: what meshcert's
// caches see in a real mesh, where a Dataplane holds more than its tags.
func kumaDataplaneSpec(ns, svc string, i int) []byte {
	ip := fmt.Sprintf("10.%d.%d.%d", 244+i>>16&0x7, i>>8&0xff, i&0xff)
	return fmt.Appendf(nil, `{"networking": {"address": %[1]q, "advertisedAddress": %[1]q, "admin": {"port": 9901},
		"inbound": [{"port": 8080, "servicePort": 8080, "serviceAddress": %[1]q, "health": {"ready": true},
			"tags": {"kuma.io/service": "%[3]s_%[2]s_svc_8080", "kuma.io/protocol": "http", "kuma.io/zone": "default",
				"k8s.kuma.io/namespace": %[2]q, "k8s.kuma.io/service-name": %[3]q, "k8s.kuma.io/service-port": "8080",
				"app": %[3]q, "pod-template-hash": "7d4b9c8f6d", "version": "v1"}}],
		"transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001, "ipFamilyMode": "DualStack"}},
	"probes": {"port": 9000, "endpoints": [
		{"inboundPort": 8080, "inboundPath": "/ready", "path": "/8080/ready"},
		{"inboundPort": 8080, "inboundPath": "/live", "path": "/8080/live"}]}}`, ip, ns, svc)
}

// testdata reads a file under test/testdata.
func testdata(name string) ([]byte, error) {
	_, file, _, _ := runtime.Caller(0)
	return os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "test", "testdata", name))
}

// follow calls seen with each object of obj's type in ns that an informer
// (which relists and rewatches as needed) adds or updates, until ctx ends.
// It returns once the informer has synced.
func follow(ctx context.Context, e *env, obj client.Object, ns string, seen func(client.Object)) error {
	c, err := crcache.New(e.c.Config, crcache.Options{Scheme: e.c.Client.Scheme(), DefaultNamespaces: map[string]crcache.Config{ns: {}}})
	if err != nil {
		return err
	}
	informer, err := c.GetInformer(ctx, obj)
	if err != nil {
		return err
	}
	handle := func(o any) {
		if obj, ok := o.(client.Object); ok {
			seen(obj)
		}
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, o any) { handle(o) }}); err != nil {
		return err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return errors.New("the informer did not sync")
	}
	return nil
}

// firstSeen records when each name was first seen.
type firstSeen struct {
	mu   sync.Mutex
	at   map[string]time.Time
	last time.Time // when the last name was first seen
}

func (f *firstSeen) see(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.at[name]; !ok {
		f.last = time.Now()
		f.at[name] = f.last
	}
}

func (f *firstSeen) when(name string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.at[name]
	return at, ok
}

// count is how many names were seen, and when the last was first seen.
func (f *firstSeen) count() (int, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.at), f.last
}

func isReady(conds []cmapi.CertificateRequestCondition) bool {
	return slices.ContainsFunc(conds, func(c cmapi.CertificateRequestCondition) bool {
		return c.Type == cmapi.CertificateRequestConditionReady && c.Status == cmmeta.ConditionTrue
	})
}

// timeCreates creates n objects in parallel with create, and returns the
// time from the first create until done says all n objects of watch's type
// in ns are done, or until limit, with how many were done by then.
func (e *env) timeCreates(ctx context.Context, watch client.Object, ns string, n int, limit time.Duration, done func(client.Object) bool, create func(i int) error) (time.Duration, int, error) {
	followCtx, stop := context.WithCancel(ctx)
	defer stop()
	finished := &firstSeen{at: map[string]time.Time{}}
	if err := follow(followCtx, e, watch, ns, func(o client.Object) {
		if done(o) {
			finished.see(o.GetName())
		}
	}); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := parallel(n, create); err != nil {
		return 0, 0, err
	}
	for {
		count, last := finished.count()
		switch {
		case count >= n:
			return last.Sub(start), n, nil
		case time.Since(start) >= limit:
			return time.Since(start), count, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const benchNamespace = "bench"
