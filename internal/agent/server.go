package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/go-logr/logr"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadv1 "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshcert/meshcert/internal/agent/attest"
)

// Server serves SDS and the Workload API on one Unix socket.
type Server struct {
	Resolver *Resolver
	SVIDs    *SVIDs
	Bundles  *Bundles
	Updates  *Updates
	Limits   Limits
	Log      logr.Logger
}

// Limits bound what one caller can make the agent do. Each is enforced
// before the work it bounds: a request too large is refused as it is read,
// a call over a cap before its caller is attested, a request of too many
// names before any name is looked at.
type Limits struct {
	// MaxRequestBytes is the largest request message read. A
	// DiscoveryRequest that names its secrets is a few hundred bytes.
	MaxRequestBytes int
	// MaxStreamsPerConnection is HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS:
	// a gRPC client queues the calls over it, the transport refuses those
	// of any other client.
	MaxStreamsPerConnection uint32
	// MaxCallsPerCaller is how many calls one caller keeps open at once,
	// over all its connections; more are ResourceExhausted.
	MaxCallsPerCaller int
	// MaxResourceNames is the most names one SDS request may hold.
	MaxResourceNames int
	// MaxConnections and MaxConnectionsPerCaller bound the connections
	// open at once, in all and of one caller: each holds buffers and
	// goroutines before it makes a call. One over either is closed at its
	// handshake.
	MaxConnections          int
	MaxConnectionsPerCaller int
	// CallerOf names the caller whose calls count together: ByProcess, or
	// ByUser where a user is one identity.
	CallerOf func(attest.Caller) string
}

// ByProcess counts each process's calls on their own: the kernel names it
// at the handshake, before any work. A user would not do where one user
// runs many workloads, as Kuma's sidecar runs as the same user in every
// pod of a node.
func ByProcess(c attest.Caller) string {
	return "pid " + strconv.FormatInt(int64(c.PID), 10) + " started " + strconv.FormatUint(c.StartTime, 10)
}

// ByUser counts every call of one Unix user together: for the unix
// attestor, where the user is the identity, however many processes it runs.
func ByUser(c attest.Caller) string { return "uid " + strconv.FormatUint(uint64(c.UID), 10) }

// Serve listens on the socket at path until ctx ends, closing listening
// once it does. A socket left by an earlier run is replaced. Every local
// process may connect: who it is, and so what it gets, is decided per
// connection.
func (s *Server) Serve(ctx context.Context, path string, listening chan<- struct{}) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the old socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		ln.Close()
		return err
	}
	// A node's workloads hold a connection each, open for their life, that
	// carries a few kilobytes an hour: a read buffer of 8 KiB, not grpc-go's
	// 32 KiB. The write buffer stays each connection's own: a shared one is
	// taken from a pool and given back at every flush, a cost paid on the
	// answer a starting workload waits for, its first certificate, to save
	// memory on connections that are idle anyway.
	calls := &openCounts{what: "call", refusal: refusedTooManyCalls, limit: s.Limits.MaxCallsPerCaller, callerOf: s.Limits.CallerOf, open: map[string]int{}, log: s.Log}
	conns := &openCounts{what: "connection", refusal: refusedTooManyConns, limit: s.Limits.MaxConnectionsPerCaller, total: s.Limits.MaxConnections,
		callerOf: s.Limits.CallerOf, open: map[string]int{}, log: s.Log}
	g := grpc.NewServer(grpc.Creds(peerCredentials{procfs: s.Resolver.Procfs, conns: conns}), grpc.ReadBufferSize(8<<10),
		grpc.MaxRecvMsgSize(s.Limits.MaxRequestBytes), grpc.MaxConcurrentStreams(s.Limits.MaxStreamsPerConnection),
		grpc.ChainUnaryInterceptor(calls.unary), grpc.ChainStreamInterceptor(calls.stream))
	secretv3.RegisterSecretDiscoveryServiceServer(g, &sds{s: s})
	workloadv1.RegisterSpiffeWorkloadAPIServer(g, &workloadAPI{s: s})
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	s.Log.Info("Serving SDS and the Workload API", "socket", path)
	close(listening)
	if err := g.Serve(ln); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// The refusals a caller is told, and no more, as SPIRE's agent tells "no
// identity issued": why is the agent's log's, at --log-level 1 for a
// refusal, as it may name other objects and carry the API server's error
// text, and a caller may ask again and again.
const (
	errNotEntitled      = "workload is not entitled to an identity"
	errNoLongerEntitled = "workload is no longer entitled to this identity"
	errNotAttested      = "the agent could not attest the workload; ask again later"
	errTooManyCalls     = "the workload has too many calls open to the agent"
)

// callerOf is the kernel's word on who made a call.
func callerOf(ctx context.Context) (attest.Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return attest.Caller{}, status.Error(codes.Internal, "no peer on the call")
	}
	info, ok := p.AuthInfo.(callerInfo)
	if !ok {
		return attest.Caller{}, status.Error(codes.Internal, "the connection was not attested")
	}
	return info.Caller, nil
}

// identityOf attests the caller of a call and resolves its identity. A
// caller that is entitled to none gets PermissionDenied, and no more.
func (s *Server) identityOf(ctx context.Context) (*Identity, error) {
	caller, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.Resolver.Resolve(ctx, caller)
	var ne *NotEntitled
	switch {
	case errors.As(err, &ne):
		s.Log.V(1).Info("Refused a caller", "pid", caller.PID, "uid", caller.UID, "reason", ne.Reason)
		refused(refusedNotEntitled)
		return nil, status.Error(codes.PermissionDenied, errNotEntitled)
	case err != nil:
		s.Log.Error(err, "Attesting a caller failed", "pid", caller.PID, "uid", caller.UID)
		refused(refusedNotAttested)
		return nil, status.Error(codes.Unavailable, errNotAttested)
	}
	return id, nil
}

// openCounts counts what each caller holds open, its calls or its
// connections, and refuses one more over the caller's limit, or over total
// where total is set, before anything else is done for it.
type openCounts struct {
	what         string // "call" or "connection", for the log
	refusal      string // the reason counted in callersRefused
	limit, total int
	callerOf     func(attest.Caller) string
	log          logr.Logger

	mu   sync.Mutex
	all  int
	open map[string]int
}

// begin counts one more of the caller's until release is called, which may
// be called more than once; ok is false, and nothing counted, over a limit.
func (o *openCounts) begin(c attest.Caller) (release func(), ok bool) {
	key := o.callerOf(c)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.open[key] >= o.limit || (o.total > 0 && o.all >= o.total) {
		o.log.V(1).Info("Refused one more over a limit", "what", o.what, "caller", key, "callerLimit", o.limit, "open", o.all, "limit", o.total)
		refused(o.refusal)
		return nil, false
	}
	o.all++
	o.open[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			o.all--
			if o.open[key]--; o.open[key] == 0 {
				delete(o.open, key)
			}
		})
	}, true
}

// beginCall counts a call of the caller of ctx, or refuses it with
// ResourceExhausted.
func (o *openCounts) beginCall(ctx context.Context) (end func(), err error) {
	caller, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	end, ok := o.begin(caller)
	if !ok {
		return nil, status.Error(codes.ResourceExhausted, errTooManyCalls)
	}
	return end, nil
}

func (o *openCounts) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	end, err := o.beginCall(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	return handler(ctx, req)
}

func (o *openCounts) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	end, err := o.beginCall(ss.Context())
	if err != nil {
		return err
	}
	defer end()
	return handler(srv, ss)
}

// countedConn is a connection counted until it is closed.
type countedConn struct {
	net.Conn
	release func()
}

func (c *countedConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// bundlesFor are the trust domains a workload trusts: those of its mesh, and
// always its own.
func (s *Server) bundlesFor(ctx context.Context, svid *SVID) ([]*x509bundle.Bundle, error) {
	b, err := s.Bundles.ForMesh(ctx, svid.Identity.Mesh)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading the mesh's trust: %v", err)
	}
	return withOwn(b, svid), nil
}

// peerCredentials is the transport security of a Unix socket: no
// encryption, and the kernel's word on who connected as the AuthInfo.
type peerCredentials struct {
	procfs attest.Procfs
	conns  *openCounts
}

type callerInfo struct {
	credentials.CommonAuthInfo
	Caller attest.Caller
}

func (callerInfo) AuthType() string { return "peercred" }

func (p peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("not a Unix socket connection")
	}
	caller, err := p.procfs.Peer(uc)
	if err != nil {
		return nil, nil, err
	}
	release, ok := p.conns.begin(caller)
	if !ok {
		return nil, nil, errors.New("too many connections open to the agent")
	}
	return &countedConn{Conn: conn, release: release}, callerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Caller: caller}, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer credentials are for the server side")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCredentials) Clone() credentials.TransportCredentials { return p }

func (peerCredentials) OverrideServerName(string) error { return nil }
