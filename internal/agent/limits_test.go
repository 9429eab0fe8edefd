package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/kuma"
)

// testLimits are the limits of the agent's flags' defaults.
var testLimits = Limits{MaxRequestBytes: 64 << 10, MaxStreamsPerConnection: 100, MaxCallsPerCaller: 32, MaxResourceNames: 64, CallerOf: ByProcess}

// attestorFunc is an Attestor of a test.
type attestorFunc func(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error)

func (f attestorFunc) Dataplane(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	return f(ctx, c)
}

// webDataplane is the Dataplane whose identity is webID, by webIdentity.
func webDataplane() *kuma.DataplaneResource {
	return &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Namespace: "pay", Name: "web"}, Mesh: "payments"}
}

// servedWeb is an Attestor that gives every caller the web Dataplane.
func servedWeb(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	return webDataplane(), nil, nil
}

// serveOnSocket serves, on a Unix socket, newTestServer's Server with the
// attestor, limits and log given, whose MeshIdentity gives the web
// Dataplane webID; every caller is this process. It returns the socket.
func serveOnSocket(t *testing.T, attestor Attestor, limits Limits, log logr.Logger) string {
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
	cache := fake.NewClientBuilder().WithScheme(scheme).WithObjects(identity).Build()
	s.Resolver = &Resolver{Attestor: attestor, Cache: cache, SystemNamespace: "kong-mesh-system", Zone: "default", Procfs: attest.Procfs{Root: "/proc"}}
	s.Limits, s.Log = limits, log
	// Short: a socket's path must fit 108 bytes.
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "socket")
	ctx, cancel := context.WithCancel(context.Background())
	listening, served := make(chan struct{}), make(chan error, 1)
	go func() { served <- s.Serve(ctx, socket, listening) }()
	go func() {
		for {
			select {
			case <-s.SVIDs.wake: // No controller here: the certificate is there already.
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
	return socket
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
			}), tc.limits, logr.Discard())
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
			socket := serveOnSocket(t, attestorFunc(servedWeb), testLimits, logr.Discard())
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
			socket := serveOnSocket(t, attestorFunc(servedWeb), testLimits, logr.Discard())
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
	*obj.(*kuma.DataplaneResource) = *webDataplane()
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
			}), testLimits, logr.Discard())
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
			}), testLimits, log)
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
