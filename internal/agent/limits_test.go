package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// testLimits are the limits of the agent's flags' defaults.
var testLimits = Limits{MaxRequestBytes: 64 << 10, MaxStreamsPerConnection: 100, MaxCallsPerCaller: 32, MaxResourceNames: 64, CallerOf: ByProcess,
	MaxConnections: 2048, MaxConnectionsPerCaller: 64}

// attestorFunc is an Attestor of a test.
type attestorFunc func(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error)

func (f attestorFunc) Dataplane(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	return f(ctx, c)
}

// payWebDataplane is the Dataplane whose identity is webID, by webIdentity.
func payWebDataplane() *kuma.DataplaneResource {
	return &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Namespace: "pay", Name: "web"}, Mesh: "payments"}
}

// servedWeb is an Attestor that gives every caller the web Dataplane.
func servedWeb(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	return payWebDataplane(), nil, nil
}

// testAgent is a Server on a Unix socket, whose every caller is this
// process, and the cache its MeshIdentities are read from.
type testAgent struct {
	*Server
	socket string
	cache  client.Client
	clock  *clocktesting.FakePassiveClock
}

// serveOnSocket serves, on a Unix socket, newTestServer's Server with the
// attestor, limits and log given, and SVIDs that issue through a fake API
// server; its MeshIdentity web gives the web Dataplane webID.
func serveOnSocket(t *testing.T, attestor Attestor, limits Limits, log logr.Logger) *testAgent {
	t.Helper()
	s, _, _ := newTestServer(t)
	td, path := "payments.example.com", "/ns/pay/sa/web"
	identity := &kuma.MeshIdentityResource{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "kong-mesh-system", Labels: map[string]string{"kuma.io/mesh": "payments"},
			Annotations: map[string]string{kuma.IssuerNameAnnotation: "payments-ca"}},
		Spec: kuma.MeshIdentitySpec{
			Selector: &kuma.IdentitySelector{Dataplane: &kuma.LabelSelector{}},
			SpiffeID: &kuma.SpiffeID{TrustDomain: &td, Path: &path},
			Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire},
		},
	}
	scheme := runtime.NewScheme()
	if err := kuma.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := cmapi.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cache := fake.NewClientBuilder().WithScheme(scheme).WithObjects(identity).
		WithIndex(&cmapi.CertificateRequest{}, issuance.OwnerIndex, func(o client.Object) []string {
			return []string{o.GetAnnotations()[issuance.OwnerAnnotation]}
		}).Build()
	s.Resolver = &Resolver{Attestor: attestorFunc(servedWeb), Cache: cache, SystemNamespace: "kong-mesh-system", Zone: "default",
		KeyAlgorithm: issuance.ECDSAP256, Procfs: attest.Procfs{Root: "/proc"}}
	// The certificate newTestServer holds, issued as web is now, held by
	// nobody yet.
	held := s.SVIDs.ids[webID]
	self := attest.Caller{PID: int32(os.Getpid())}
	var err error
	if self.StartTime, err = s.Resolver.Procfs.StartTime(self.PID); err != nil {
		t.Fatal(err)
	}
	if held.identity, err = s.Resolver.Resolve(context.Background(), self); err != nil {
		t.Fatal(err)
	}
	held.svid.Identity = held.identity
	s.Resolver.Attestor = attestor
	s.Limits, s.Log = limits, log
	a := &testAgent{Server: s, cache: cache, clock: clocktesting.NewFakePassiveClock(time.Now())}
	s.SVIDs = NewSVIDs(SVIDOptions{Client: cache, SystemNamespace: "kong-mesh-system", Node: "node-a", Recorder: events.NewFakeRecorder(100),
		Clock: a.clock, RequestTimeout: time.Minute, Backoff: issuance.BackoffPolicy{Initial: time.Second, Max: time.Minute},
		Bundles: s.Bundles, Updates: s.Updates})
	held.users, held.idleSince = 0, a.clock.Now()
	s.SVIDs.ids[webID] = held

	// Short: a socket's path must fit 108 bytes.
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	a.socket = filepath.Join(dir, "socket")
	ctx, cancel := context.WithCancel(context.Background())
	listening, served := make(chan struct{}), make(chan error, 1)
	go func() { served <- s.Serve(ctx, a.socket, listening) }()
	go func() {
		for {
			select {
			case <-s.SVIDs.wake: // No controller here: a test reconciles.
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serving: %v", err)
		}
		os.RemoveAll(dir)
	})
	select {
	case <-listening:
	case err := <-served:
		t.Fatalf("serving: %v", err)
	}
	return a
}

// dial is a gRPC client of the socket that accepts answers of any size, as
// a careless client would: what keeps answers small must be the agent.
func dial(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func repeated(name string, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = name
	}
	return names
}

// TestRequestLimits: a request of too many names, or too many bytes, is
// refused before the caller is attested; names asked for twice are served
// once.
func TestRequestLimits(t *testing.T) {
	large := testLimits
	large.MaxRequestBytes = 4 << 20
	tests := map[string]struct {
		limits Limits
		names  []string
		// served are the secrets' names, or code and message the refusal.
		served  []string
		code    codes.Code
		message string
	}{
		"10,000 repeated default names: larger than a request may be": {
			limits: testLimits, names: repeated("default", 10_000), code: codes.ResourceExhausted, message: "vs. 65536",
		},
		"10,000 repeated default names under a larger byte limit: too many names": {
			limits: large, names: repeated("default", 10_000), code: codes.InvalidArgument, message: "the request names 10000 secrets; the agent serves at most 64",
		},
		"a request of 1.8 MB": {
			limits: testLimits, names: repeated("default", 200_000), code: codes.ResourceExhausted, message: "vs. 65536",
		},
		"64 repeated default names: one secret": {limits: testLimits, names: repeated("default", 64), served: []string{"default"}},
		"each name twice: each once, in the order first asked": {
			limits: testLimits, names: []string{"ALL", webID, "ALL", webID}, served: []string{"ALL", webID},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var attested atomic.Int32
			socket := serveOnSocket(t, attestorFunc(func(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
				attested.Add(1)
				return servedWeb(ctx, c)
			}), tc.limits, logr.Discard()).socket
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := secretv3.NewSecretDiscoveryServiceClient(dial(t, socket)).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: tc.names})
			if tc.served == nil {
				if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.message) {
					t.Fatalf("err = %v (answer of %d bytes), want %v saying %q", err, proto.Size(resp), tc.code, tc.message)
				}
				if n := attested.Load(); n != 0 {
					t.Errorf("the caller was attested %d times before the refusal, want none", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var served []string
			for _, a := range resp.Resources {
				secret := &tlsv3.Secret{}
				if err := a.UnmarshalTo(secret); err != nil {
					t.Fatal(err)
				}
				served = append(served, secret.Name)
			}
			if !slices.Equal(served, tc.served) {
				t.Errorf("served %v, want %v", served, tc.served)
			}
			if size := proto.Size(resp); size > 16<<10 {
				t.Errorf("an answer of %d bytes", size)
			}
		})
	}
}

// TestAStreamOfTooManyNamesEnds: on a stream too, a request of too many
// names, or bytes, ends it; repeated names are served once.
func TestAStreamOfTooManyNamesEnds(t *testing.T) {
	tests := map[string]struct {
		names  []string
		served int
		code   codes.Code
	}{
		"10,000 repeated default names": {names: repeated("default", 10_000), code: codes.ResourceExhausted},
		"65 names":                      {names: repeated("default", 65), code: codes.InvalidArgument},
		"64 repeated default names":     {names: repeated("default", 64), served: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			socket := serveOnSocket(t, attestorFunc(servedWeb), testLimits, logr.Discard()).socket
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stream, err := secretv3.NewSecretDiscoveryServiceClient(dial(t, socket)).StreamSecrets(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: tc.names}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if tc.code != codes.OK {
				if status.Code(err) != tc.code {
					t.Fatalf("err = %v (answer of %d bytes), want %v", err, proto.Size(resp), tc.code)
				}
				return
			}
			if err != nil || len(resp.Resources) != tc.served {
				t.Fatalf("%d secrets (%v), want %d", len(resp.GetResources()), err, tc.served)
			}
		})
	}
}

// TestCallsPerCaller: a caller that opens thousands of streams, on one
// connection or many, holds no more than its limit; the rest are refused
// with ResourceExhausted at once, and what the agent holds stays bounded.
func TestCallsPerCaller(t *testing.T) {
	tests := map[string]struct {
		connections, streamsEach int
	}{
		"3,000 streams on one connection":       {connections: 1, streamsEach: 3000},
		"a stream on each of 200 connections":   {connections: 200, streamsEach: 1},
		"ten streams on each of 50 connections": {connections: 50, streamsEach: 10},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// The calls' cap alone: the connections' is another test's.
			limits := testLimits
			limits.MaxConnectionsPerCaller = 1000
			socket := serveOnSocket(t, attestorFunc(servedWeb), limits, logr.Discard()).socket
			conns := make([]secretv3.SecretDiscoveryServiceClient, tc.connections)
			for i := range conns {
				conns[i] = secretv3.NewSecretDiscoveryServiceClient(dial(t, socket))
			}
			goruntime.GC()
			var before goruntime.MemStats
			goruntime.ReadMemStats(&before)
			goroutinesBefore := goruntime.NumGoroutine()

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			total := tc.connections * tc.streamsEach
			outcomes := make(chan codes.Code, total)
			var holding sync.WaitGroup
			for i := range total {
				holding.Add(1)
				go func() {
					defer holding.Done()
					stream, err := conns[i%tc.connections].StreamSecrets(ctx)
					if err == nil {
						// A refused stream's Send may see its end (io.EOF);
						// its Recv, why.
						_ = stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}})
						_, err = stream.Recv()
					}
					outcomes <- status.Code(err)
					if err == nil {
						<-ctx.Done() // Held open, as Envoy holds its streams.
					}
				}()
			}
			got := map[codes.Code]int{}
			for range total {
				got[<-outcomes]++
			}
			limit := testLimits.MaxCallsPerCaller
			if got[codes.OK] != limit || got[codes.ResourceExhausted] != total-limit {
				t.Errorf("outcomes %v, want %d served and %d ResourceExhausted", got, limit, total-limit)
			}
			goruntime.GC()
			var after goruntime.MemStats
			goruntime.ReadMemStats(&after)
			// Client and agent both in this process: a held stream is a few
			// goroutines on each side, a connection a few more.
			if grown, most := goruntime.NumGoroutine()-goroutinesBefore, 8*limit+8*tc.connections; grown > most {
				t.Errorf("%d more goroutines, want at most %d", grown, most)
			}
			if grown, most := int64(after.HeapInuse)-int64(before.HeapInuse), int64(8<<20+64<<10*tc.connections); grown > most {
				t.Errorf("the heap grew by %d bytes, want at most %d", grown, most)
			}
			cancel()
			holding.Wait()

			// The calls ended are the caller's again, once the agent has
			// seen them end.
			var err error
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if _, err = conns[0].FetchSecrets(context.Background(), &discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}}); err == nil {
					break
				}
			}
			if err != nil {
				t.Errorf("after its streams ended, the caller is refused: %v", err)
			}
		})
	}
}

// countedReads is the API server's reader of a test: it counts the reads,
// and holds each until released.
type countedReads struct {
	client.Reader
	reads   atomic.Int32
	release chan struct{}
}

func (c *countedReads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	c.reads.Add(1)
	select {
	case <-c.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	if key != (types.NamespacedName{Namespace: "pay", Name: "web"}) {
		return apierrors.NewNotFound(schema.GroupResource{Group: kuma.GroupVersion.Group, Resource: "dataplanes"}, key.Name)
	}
	*obj.(*kuma.DataplaneResource) = *payWebDataplane()
	return nil
}

// TestOneDataplaneReadAtATime: the streams a workload opens at once cost
// one read of its Dataplane, and each gets its identity from it.
func TestOneDataplaneReadAtATime(t *testing.T) {
	tests := map[string]struct {
		dataplane string
		code      codes.Code
	}{
		"its Dataplane":       {dataplane: "web", code: codes.OK},
		"no Dataplane at all": {dataplane: "gone", code: codes.PermissionDenied},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			const streams = 20
			api := &countedReads{release: make(chan struct{})}
			dataplanes := SharedReads(api)
			var asked atomic.Int32
			socket := serveOnSocket(t, attestorFunc(func(ctx context.Context, _ attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
				asked.Add(1)
				dp := &kuma.DataplaneResource{}
				err := dataplanes.Get(ctx, types.NamespacedName{Namespace: "pay", Name: tc.dataplane}, dp)
				if apierrors.IsNotFound(err) {
					return nil, nil, notEntitled("no Dataplane")
				}
				return dp, nil, err
			}), testLimits, logr.Discard()).socket
			conn := secretv3.NewSecretDiscoveryServiceClient(dial(t, socket))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			codesOf := make(chan codes.Code, streams)
			for range streams {
				go func() {
					_, err := conn.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}})
					codesOf <- status.Code(err)
				}()
			}
			for asked.Load() < streams && ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // From the attestor to the shared read.
			close(api.release)
			for range streams {
				if code := <-codesOf; code != tc.code {
					t.Errorf("a call ended %v, want %v", code, tc.code)
				}
			}
			if n := api.reads.Load(); n != 1 {
				t.Errorf("%d concurrent calls read the Dataplane %d times, want once", streams, n)
			}
		})
	}
}

// TestARefusalTellsTheCallerOnlyWhatItNeeds: the reason, which may carry the
// API server's words and name other objects, is the agent's log's, at
// level 1; the caller learns that it gets nothing.
func TestARefusalTellsTheCallerOnlyWhatItNeeds(t *testing.T) {
	const apiText = `Dataplane pay/web is owned by Pod pay/db (uid 2b7c): GET https://10.96.0.1:443/apis/kuma.io/v1alpha1/namespaces/pay/dataplanes/web`
	tests := map[string]struct {
		err     error
		code    codes.Code
		message string
		// logged is at which log level the reason is logged.
		logged int
	}{
		"not entitled": {err: notEntitled("%s", apiText), code: codes.PermissionDenied, message: "workload is not entitled to an identity", logged: 1},
		"the API server failed": {err: errors.New(apiText + ": connection refused"), code: codes.Unavailable,
			message: "the agent could not attest the workload; ask again later", logged: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var logs []string
			log := funcr.New(func(prefix, args string) {
				mu.Lock()
				defer mu.Unlock()
				logs = append(logs, args)
			}, funcr.Options{Verbosity: 1})
			socket := serveOnSocket(t, attestorFunc(func(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
				return nil, nil, tc.err
			}), testLimits, log).socket
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := secretv3.NewSecretDiscoveryServiceClient(dial(t, socket)).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}})
			if status.Code(err) != tc.code || status.Convert(err).Message() != tc.message {
				t.Errorf("the caller got %v, want %v: %s", err, tc.code, tc.message)
			}
			mu.Lock()
			defer mu.Unlock()
			var at []int
			for _, l := range logs {
				if strings.Contains(l, apiText) {
					level := 0
					if strings.Contains(l, `"level"=1`) {
						level = 1
					}
					at = append(at, level)
				}
			}
			if !slices.Equal(at, []int{tc.logged}) {
				t.Errorf("the reason was logged at levels %v, want once at %d; logs: %q", at, tc.logged, logs)
			}
		})
	}
}

// TestEntitlementIsCheckedAgain: an open stream's caller is checked again
// when what entitled it changes, and before its certificate is renewed; a
// caller no longer entitled is refused and nothing is renewed for it; a
// changed issuer re-issues.
func TestEntitlementIsCheckedAgain(t *testing.T) {
	webPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "pay", Name: "web", UID: "pod-web"}}
	tests := map[string]struct {
		// change changes the world, with the caller entitled to nothing
		// from then on when gone, then tells the agent as its watches would.
		change func(t *testing.T, a *testAgent)
		gone   bool
		// refused is the message the stream ends with; "" if it stays.
		refused string
		// issuer is the issuer a CertificateRequest is made for, after a
		// reconcile; "" for none.
		issuer string
	}{
		"its MeshIdentity deleted": {
			change: func(t *testing.T, a *testAgent) {
				if err := a.cache.Delete(context.Background(), &kuma.MeshIdentityResource{ObjectMeta: metav1.ObjectMeta{Namespace: "kong-mesh-system", Name: "web"}}); err != nil {
					t.Fatal(err)
				}
				a.Updates.RecheckAll()
			},
			refused: errNotEntitled,
		},
		"its Pod changed, its Dataplane gone": {
			change:  func(_ *testing.T, a *testAgent) { a.Updates.Recheck("pod-web") },
			gone:    true,
			refused: errNotEntitled,
		},
		"another Pod changed": {
			change: func(_ *testing.T, a *testAgent) { a.Updates.Recheck("pod-db") },
			gone:   true,
		},
		"its MeshIdentity now gives it another SPIFFE ID": {
			change: func(t *testing.T, a *testAgent) {
				a.updateIdentity(t, func(mid *kuma.MeshIdentityResource) { mid.Spec.SpiffeID.Path = ptr.To("/ns/pay/sa/web-v2") })
			},
			refused: errNoLongerEntitled,
		},
		"its renewal due, its Dataplane gone": {
			change: func(t *testing.T, a *testAgent) { a.renewalDue(t) },
			gone:   true, refused: errNotEntitled,
		},
		"its renewal due, still entitled": {
			change: func(t *testing.T, a *testAgent) { a.renewalDue(t) },
			issuer: "payments-ca",
		},
		"its MeshIdentity's issuer changed": {
			change: func(t *testing.T, a *testAgent) {
				a.updateIdentity(t, func(mid *kuma.MeshIdentityResource) { mid.Annotations[kuma.IssuerNameAnnotation] = "payments-ca-2" })
			},
			issuer: "payments-ca-2",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var gone atomic.Bool
			a := serveOnSocket(t, attestorFunc(func(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
				if gone.Load() {
					return nil, nil, notEntitled("pod pay/web has no Dataplane")
				}
				return payWebDataplane(), webPod, nil
			}), testLimits, logr.Discard())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stream, err := secretv3.NewSecretDiscoveryServiceClient(dial(t, a.socket)).StreamSecrets(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{webID}}); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}

			gone.Store(tc.gone)
			tc.change(t, a)
			ended := make(chan error, 1)
			go func() {
				_, err := stream.Recv()
				ended <- err
			}()
			select {
			case err := <-ended:
				if tc.refused == "" {
					t.Fatalf("the stream ended: %v", err)
				}
				if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != tc.refused {
					t.Fatalf("the stream ended with %v, want PermissionDenied: %s", err, tc.refused)
				}
			case <-time.After(500 * time.Millisecond):
				if tc.refused != "" {
					t.Fatal("the stream goes on")
				}
			}
			if tc.refused != "" {
				// Its call over, the identity is held by nobody.
				for deadline := time.Now().Add(10 * time.Second); usersOf(a.SVIDs, webID) > 0 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
			}
			if _, err := a.SVIDs.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: webID}}); err != nil {
				t.Fatal(err)
			}
			var requests cmapi.CertificateRequestList
			if err := a.cache.List(ctx, &requests); err != nil {
				t.Fatal(err)
			}
			var issuers []string
			for _, cr := range requests.Items {
				issuers = append(issuers, cr.Spec.IssuerRef.Name)
			}
			var want []string
			if tc.issuer != "" {
				want = []string{tc.issuer}
			}
			if !slices.Equal(issuers, want) {
				t.Errorf("requests for issuers %q, want %q", issuers, tc.issuer)
			}
		})
	}
}

// updateIdentity changes the MeshIdentity web, as its informer tells.
func (a *testAgent) updateIdentity(t *testing.T, change func(*kuma.MeshIdentityResource)) {
	t.Helper()
	mid := &kuma.MeshIdentityResource{}
	if err := a.cache.Get(context.Background(), types.NamespacedName{Namespace: "kong-mesh-system", Name: "web"}, mid); err != nil {
		t.Fatal(err)
	}
	change(mid)
	if err := a.cache.Update(context.Background(), mid); err != nil {
		t.Fatal(err)
	}
	a.Updates.RecheckAll()
}

// renewalDue moves the clock to when web's certificate is due for renewal,
// and reconciles it: the renewal waits for its connections to check their
// entitlement again.
func (a *testAgent) renewalDue(t *testing.T) {
	t.Helper()
	leaf := a.SVIDs.Get(webID).Leaf()
	a.clock.SetTime(leaf.NotAfter.Add(-time.Minute))
	res, err := a.SVIDs.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: webID}})
	if err != nil || res.RequeueAfter != recheckGrace {
		t.Fatalf("the renewal's first reconcile: %+v, %v; want a wait of %s for the connections' checks", res, err, recheckGrace)
	}
}

// usersOf is how many connections hold an identity.
func usersOf(s *SVIDs, spiffeID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.ids[spiffeID]; w != nil {
		return w.users
	}
	return 0
}

// TestConnectionLimits: a caller that opens connection after connection,
// and never calls, is closed at the handshake once over its limit or the
// agent's, before its connection holds buffers and goroutines; one closed
// frees its place.
func TestConnectionLimits(t *testing.T) {
	tests := map[string]struct {
		perCaller, total int
		open             int
		wantServed       int
	}{
		"the caller's limit":  {perCaller: 4, total: 100, open: 10, wantServed: 4},
		"the agent's limit":   {perCaller: 100, total: 3, open: 10, wantServed: 3},
		"under both, all are": {perCaller: 16, total: 100, open: 10, wantServed: 10},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			limits := testLimits
			limits.MaxConnectionsPerCaller, limits.MaxConnections = tc.perCaller, tc.total
			a := serveOnSocket(t, attestorFunc(servedWeb), limits, logr.Discard())
			served := func(conn net.Conn) bool {
				// A connection past its handshake gets the server's HTTP/2
				// settings; a refused one is closed.
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := conn.Read(make([]byte, 64))
				return n > 0 && err == nil
			}
			var conns []net.Conn
			t.Cleanup(func() {
				for _, c := range conns {
					c.Close()
				}
			})
			got := 0
			for range tc.open {
				conn, err := net.Dial("unix", a.socket)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, conn)
				if served(conn) {
					got++
				}
			}
			if got != tc.wantServed {
				t.Errorf("%d of %d connections served, want %d", got, tc.open, tc.wantServed)
			}
			// One closed frees its place.
			if tc.wantServed < tc.open {
				conns[0].Close()
				freed := false
				for deadline := time.Now().Add(10 * time.Second); !freed && time.Now().Before(deadline); {
					conn, err := net.Dial("unix", a.socket)
					if err != nil {
						t.Fatal(err)
					}
					conns = append(conns, conn)
					freed = served(conn)
				}
				if !freed {
					t.Error("no connection was served after one closed")
				}
			}
		})
	}
}
