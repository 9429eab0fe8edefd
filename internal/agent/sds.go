package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshcert/meshcert/internal/trust"
)

// The secret names SPIRE's agent serves, which Kuma's Spire provider asks
// for, and the type of what SDS serves.
const (
	AllBundlesName     = "ALL"
	OwnBundleName      = "ROOTCA"
	DefaultSVIDName    = "default"
	SecretTypeURL      = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	SPIFFEValidatorKey = "envoy.tls.cert_validator.spiffe"
)

// sds is Envoy's Secret Discovery Service, v3, with the stream semantics
// of Envoy's xDS protocol.
type sds struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	s *Server
}

// StreamSecrets serves a stream: every response has a version and a nonce; a
// request with a stale nonce is ignored; a NACK is logged and its names
// still served; a change of names is answered at once; any change of what
// the names hold is pushed; a caller no longer entitled to its identity is
// refused.
func (d *sds) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	ctx := stream.Context()
	id, err := d.s.identityOf(ctx)
	if err != nil {
		return err
	}
	w := d.s.watch(id)
	defer w.close()

	requests := make(chan *discoveryv3.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case requests <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		names      []string
		subscribed bool
		version    int
		nonce      string
		sent       []*anypb.Any
		// builtFrom is what the last answer was built from: a wake-up that
		// changed neither, for another identity of the node, costs no
		// rebuild; new names always do.
		builtFrom served
		newNames  = true
	)
	log := d.s.Log.WithValues("spiffeID", id.SpiffeID)
	for {
		if err := w.recheck(ctx); err != nil {
			return err
		}
		if in := w.current(); subscribed && (newNames || in != builtFrom) {
			resources, ready, err := d.resources(ctx, w.id, names)
			if err != nil {
				return err
			}
			builtFrom, newNames = in, false
			if ready && (sent == nil || !sameResources(resources, sent)) {
				version++
				nonce = newNonce()
				if err := stream.Send(&discoveryv3.DiscoveryResponse{
					VersionInfo: strconv.Itoa(version), Resources: resources, TypeUrl: SecretTypeURL, Nonce: nonce,
				}); err != nil {
					return err
				}
				sent = resources
			}
		}
		select {
		case req := <-requests:
			asked, err := d.requestedNames(req)
			if err != nil {
				return err
			}
			if req.ResponseNonce != "" && req.ResponseNonce != nonce {
				continue // An answer to an older response: Envoy sends another.
			}
			if req.ErrorDetail != nil {
				log.Info("Envoy rejected secrets", "version", req.VersionInfo, "error", req.ErrorDetail.Message)
			}
			if !subscribed || !slices.Equal(asked, names) {
				sent, newNames = nil, true // New names are answered at once.
			}
			names, subscribed = asked, true
		case <-w.changed:
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// FetchSecrets answers one request, once the identity has a certificate or
// the call's deadline ends.
func (d *sds) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	names, err := d.requestedNames(req)
	if err != nil {
		return nil, err
	}
	id, err := d.s.identityOf(ctx)
	if err != nil {
		return nil, err
	}
	// A name the workload is not entitled to is refused at once, not after
	// its certificate.
	if _, _, err := d.resources(ctx, id, names); err != nil {
		return nil, err
	}
	w := d.s.watch(id)
	defer w.close()
	if _, err := w.await(ctx); err != nil {
		return nil, err
	}
	resources, _, err := d.resources(ctx, id, names)
	if err != nil {
		return nil, err
	}
	return &discoveryv3.DiscoveryResponse{VersionInfo: "1", Resources: resources, TypeUrl: SecretTypeURL, Nonce: newNonce()}, nil
}

// requestedNames are a request's names, each once, in the order first
// asked, as SPIRE's agent serves each name once however often it is asked
// for. A request of more names than the limit is refused before any is
// looked at.
func (d *sds) requestedNames(req *discoveryv3.DiscoveryRequest) ([]string, error) {
	if n, most := len(req.ResourceNames), d.s.Limits.MaxResourceNames; n > most {
		refused(refusedTooManyNames)
		return nil, status.Errorf(codes.InvalidArgument, "the request names %d secrets; the agent serves at most %d to one request", n, most)
	}
	seen := make(map[string]bool, len(req.ResourceNames))
	var names []string
	for _, n := range req.ResourceNames {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	return names, nil
}

// resources builds the secrets for names, each named once. ready is false
// until the identity has a certificate: a workload gets nothing before
// that, never a placeholder. A name the workload is not entitled to is InvalidArgument.
func (d *sds) resources(ctx context.Context, id *Identity, names []string) ([]*anypb.Any, bool, error) {
	svid := d.s.SVIDs.Get(id.SpiffeID)
	var bundles []*x509bundle.Bundle
	if svid != nil {
		var err error
		if bundles, err = d.s.bundlesFor(ctx, svid); err != nil {
			return nil, false, err
		}
	} else if b, err := d.s.Bundles.ForMesh(ctx, id.Mesh); err == nil {
		bundles = b // To tell which names are the mesh's while waiting.
	}
	byName := map[string]*x509bundle.Bundle{}
	for _, b := range bundles {
		byName[b.TrustDomain().IDString()] = b
	}
	if len(names) == 0 {
		// No names is everything: the SVID and every bundle.
		names = []string{id.SpiffeID, AllBundlesName}
		for _, b := range bundles {
			names = append(names, b.TrustDomain().IDString())
		}
	}
	var unauthorized []string
	for _, n := range names {
		_, isBundle := byName[n]
		if n != id.SpiffeID && n != DefaultSVIDName && n != OwnBundleName && n != AllBundlesName && !isBundle && n != "spiffe://"+id.TrustDomain {
			unauthorized = append(unauthorized, n)
		}
	}
	if len(unauthorized) > 0 {
		refused(refusedNameNotAuthorized)
		return nil, false, status.Errorf(codes.InvalidArgument, "workload is not authorized for the requested identities %q", unauthorized)
	}
	if svid == nil {
		return nil, false, nil
	}
	var out []*anypb.Any
	for _, n := range names {
		var secret *tlsv3.Secret
		switch n {
		case id.SpiffeID, DefaultSVIDName:
			secret = &tlsv3.Secret{Name: n, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inline(svid.ChainPEM),
				PrivateKey:       inline(svid.KeyPEM),
			}}}
		case OwnBundleName:
			secret = trustedCA(n, byName["spiffe://"+id.TrustDomain])
		case AllBundlesName:
			v, err := spiffeValidator(bundles)
			if err != nil {
				return nil, false, status.Errorf(codes.Internal, "building the SPIFFE validator: %v", err)
			}
			secret = &tlsv3.Secret{Name: n, Type: &tlsv3.Secret_ValidationContext{ValidationContext: v}}
		default:
			secret = trustedCA(n, byName[n])
		}
		a, err := anypb.New(secret)
		if err != nil {
			return nil, false, status.Errorf(codes.Internal, "encoding secret %q: %v", n, err)
		}
		out = append(out, a)
	}
	return out, true, nil
}

// spiffeValidator is Envoy's SPIFFE certificate validator with each trust
// domain and its roots, sorted by trust domain.
func spiffeValidator(bundles []*x509bundle.Bundle) (*tlsv3.CertificateValidationContext, error) {
	conf := &tlsv3.SPIFFECertValidatorConfig{}
	for _, b := range bundles {
		conf.TrustDomains = append(conf.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name: b.TrustDomain().Name(), TrustBundle: inline(trust.EncodeRoots(b.X509Authorities())),
		})
	}
	typed, err := anypb.New(conf)
	if err != nil {
		return nil, err
	}
	return &tlsv3.CertificateValidationContext{CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: SPIFFEValidatorKey, TypedConfig: typed}}, nil
}

// trustedCA is a secret of a bundle's roots; of none when there is no bundle.
func trustedCA(name string, b *x509bundle.Bundle) *tlsv3.Secret {
	var roots []*x509.Certificate
	if b != nil {
		roots = b.X509Authorities()
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(trust.EncodeRoots(roots)),
	}}}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func sameResources(a, b []*anypb.Any) bool {
	return slices.EqualFunc(a, b, func(x, y *anypb.Any) bool { return proto.Equal(x, y) })
}

func newNonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
