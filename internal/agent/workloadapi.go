package agent

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadv1 "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// SecurityHeader must be on every Workload API call, as the SPIFFE Workload
// API specifies, so that a browser or a proxy cannot be made to call it.
const SecurityHeader = "workload.spiffe.io"

// workloadAPI is the X.509 part of the SPIFFE Workload API.
type workloadAPI struct {
	workloadv1.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

func checkSecurityHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(SecurityHeader); len(v) != 1 || v[0] != "true" {
		return status.Errorf(codes.InvalidArgument, "security header missing from request: %s: true", SecurityHeader)
	}
	return nil
}

// FetchX509SVID streams the workload's X509-SVID, again on every renewal and
// every change of its trust, until the caller is no longer entitled to it.
func (w *workloadAPI) FetchX509SVID(_ *workloadv1.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadv1.X509SVIDResponse]) error {
	return w.stream(stream.Context(), func(svid *SVID, bundles []*x509bundle.Bundle) (proto.Message, error) {
		return x509SVIDResponse(svid, bundles)
	}, func(m proto.Message) error { return stream.Send(m.(*workloadv1.X509SVIDResponse)) })
}

// x509SVIDResponse is the SVID with the bundle of its trust domain, and the
// other trust domains' bundles as federated ones.
func x509SVIDResponse(svid *SVID, bundles []*x509bundle.Bundle) (*workloadv1.X509SVIDResponse, error) {
	chain, key, err := svid.MarshalRaw()
	if err != nil {
		return nil, err
	}
	resp := &workloadv1.X509SVIDResponse{FederatedBundles: map[string][]byte{}}
	for _, b := range bundles {
		if b.TrustDomain() == svid.ID.TrustDomain() {
			resp.Svids = []*workloadv1.X509SVID{{
				SpiffeId:    svid.ID.String(),
				X509Svid:    chain,
				X509SvidKey: key,
				Bundle:      concatDER(b.X509Authorities()),
			}}
		} else {
			resp.FederatedBundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
		}
	}
	return resp, nil
}

// FetchX509Bundles streams the trust domains the workload trusts.
func (w *workloadAPI) FetchX509Bundles(_ *workloadv1.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadv1.X509BundlesResponse]) error {
	return w.stream(stream.Context(), func(_ *SVID, bundles []*x509bundle.Bundle) (proto.Message, error) {
		resp := &workloadv1.X509BundlesResponse{Bundles: map[string][]byte{}}
		for _, b := range bundles {
			resp.Bundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
		}
		return resp, nil
	}, func(m proto.Message) error { return stream.Send(m.(*workloadv1.X509BundlesResponse)) })
}

// stream attests the caller, then sends build's answer whenever it changes.
func (w *workloadAPI) stream(ctx context.Context, build func(*SVID, []*x509bundle.Bundle) (proto.Message, error), send func(proto.Message) error) error {
	if err := checkSecurityHeader(ctx); err != nil {
		return err
	}
	id, err := w.s.identityOf(ctx)
	if err != nil {
		return err
	}
	conn := w.s.watch(id)
	defer conn.close()
	var last proto.Message
	for {
		if err := conn.recheck(ctx); err != nil {
			return err
		}
		if svid := conn.current().svid; svid != nil {
			bundles, err := w.s.bundlesFor(ctx, svid)
			if err != nil {
				return err
			}
			msg, err := build(svid, bundles)
			if err != nil {
				return status.Errorf(codes.Internal, "building the response: %v", err)
			}
			if last == nil || !proto.Equal(msg, last) {
				if err := send(msg); err != nil {
					return err
				}
				last = msg
			}
		}
		select {
		case <-conn.changed:
		case <-ctx.Done():
			return nil
		}
	}
}

const errJWT = "meshcert's agent serves X.509 SVIDs only: JWT-SVIDs are not implemented"

func (w *workloadAPI) FetchJWTSVID(ctx context.Context, _ *workloadv1.JWTSVIDRequest) (*workloadv1.JWTSVIDResponse, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	return nil, status.Error(codes.Unimplemented, errJWT)
}

func (w *workloadAPI) FetchJWTBundles(_ *workloadv1.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadv1.JWTBundlesResponse]) error {
	if err := checkSecurityHeader(stream.Context()); err != nil {
		return err
	}
	return status.Error(codes.Unimplemented, errJWT)
}

func (w *workloadAPI) ValidateJWTSVID(ctx context.Context, _ *workloadv1.ValidateJWTSVIDRequest) (*workloadv1.ValidateJWTSVIDResponse, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	return nil, status.Error(codes.Unimplemented, errJWT)
}
