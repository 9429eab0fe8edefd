package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

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
	Log      logr.Logger
}

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
	g := grpc.NewServer(grpc.Creds(peerCredentials{procfs: s.Resolver.Procfs}), grpc.ReadBufferSize(8<<10))
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

// identityOf attests the caller of a call and resolves its identity. A
// caller that is entitled to none gets PermissionDenied, saying why.
func (s *Server) identityOf(ctx context.Context) (*Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no peer on the call")
	}
	info, ok := p.AuthInfo.(callerInfo)
	if !ok {
		return nil, status.Error(codes.Internal, "the connection was not attested")
	}
	id, err := s.Resolver.Resolve(ctx, info.Caller)
	var ne *NotEntitled
	switch {
	case errors.As(err, &ne):
		s.Log.Info("Refused a caller", "pid", info.Caller.PID, "uid", info.Caller.UID, "reason", ne.Reason)
		return nil, status.Errorf(codes.PermissionDenied, "no identity for this caller: %s", ne.Reason)
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "attesting the caller: %v", err)
	}
	return id, nil
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
type peerCredentials struct{ procfs attest.Procfs }

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
	return conn, callerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Caller: caller}, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer credentials are for the server side")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCredentials) Clone() credentials.TransportCredentials { return p }

func (peerCredentials) OverrideServerName(string) error { return nil }
