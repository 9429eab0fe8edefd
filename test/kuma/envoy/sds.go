package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/go-logr/logr"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/sdsclient"
)

// secretStore keeps one SDS stream per secret name, as Envoy does for
// secrets whose sds_config is a gRPC cluster, and the last secret each
// stream accepted.
type secretStore struct {
	ctx  context.Context
	log  logr.Logger
	node *corev3.Node

	mu      sync.Mutex
	conns   map[string]*grpc.ClientConn
	streams map[secretRef]context.CancelFunc
	held    map[secretRef]heldSecret
}

// heldSecret is an accepted secret in the form TLS uses it.
type heldSecret struct {
	cert       *tls.Certificate
	validation *validation
}

func newSecretStore(ctx context.Context, log logr.Logger, node *corev3.Node) *secretStore {
	return &secretStore{ctx: ctx, log: log, node: node, conns: map[string]*grpc.ClientConn{}, streams: map[secretRef]context.CancelFunc{}, held: map[secretRef]heldSecret{}}
}

// keep opens a stream for every ref not yet streamed and ends the streams
// of refs no longer used.
func (s *secretStore) keep(refs []secretRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ref, cancel := range s.streams {
		if !slices.Contains(refs, ref) {
			cancel()
			delete(s.streams, ref)
			delete(s.held, ref)
		}
	}
	for _, ref := range refs {
		if s.streams[ref] != nil {
			continue
		}
		conn := s.conns[ref.Socket]
		if conn == nil {
			var err error
			// The stand-in's own user: the one the pod's sidecar runs as.
			if conn, err = sdsclient.Conn(ref.Socket, uint32(os.Geteuid())); err != nil {
				s.log.Error(err, "sds connection not made", "socket", ref.Socket)
				continue
			}
			s.conns[ref.Socket] = conn
		}
		ctx, cancel := context.WithCancel(s.ctx)
		s.streams[ref] = cancel
		go s.run(ctx, secretv3.NewSecretDiscoveryServiceClient(conn), ref)
	}
}

func (s *secretStore) certificate(ref secretRef) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[ref]; h.cert != nil {
		return h.cert, nil
	}
	return nil, fmt.Errorf("secret %q from %s not received yet", ref.Name, ref.Socket)
}

func (s *secretStore) validation(ref secretRef) (*validation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[ref]; h.validation != nil {
		return h.validation, nil
	}
	return nil, fmt.Errorf("validation context %q from %s not received yet", ref.Name, ref.Socket)
}

// run keeps ref's stream open, a new one after a jittered, growing delay
// when it breaks, as Envoy's gRPC subscriptions retry.
func (s *secretStore) run(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, ref secretRef) {
	delay := 500 * time.Millisecond
	accepted := ""
	for ctx.Err() == nil {
		received, err := s.stream(ctx, client, ref, &accepted)
		if ctx.Err() != nil {
			return
		}
		s.log.Info("sds stream ended", "name", ref.Name, "socket", ref.Socket, "error", err.Error())
		if received {
			delay = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(rand.Int64N(int64(delay)) + 1)):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

func (s *secretStore) stream(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, ref secretRef, accepted *string) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.StreamSecrets(ctx)
	if err != nil {
		return false, err
	}
	req := &discoveryv3.DiscoveryRequest{Node: s.node, TypeUrl: agent.SecretTypeURL, ResourceNames: []string{ref.Name}, VersionInfo: *accepted}
	s.log.Info("sds request", "name", ref.Name, "socket", ref.Socket, "sdsCluster", ref.SDSCluster)
	for {
		if err := st.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				_, err = st.Recv()
			}
			return received, err
		}
		resp, err := st.Recv()
		if err != nil {
			return received, err
		}
		received = true
		req = &discoveryv3.DiscoveryRequest{TypeUrl: agent.SecretTypeURL, ResourceNames: []string{ref.Name}, ResponseNonce: resp.Nonce}
		held, kv, err := secretOf(resp, ref.Name)
		if err != nil {
			req.VersionInfo = *accepted
			req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			s.log.Info("sds nack", "name", ref.Name, "socket", ref.Socket, "versionInfo", resp.VersionInfo, "error", err.Error())
			continue
		}
		*accepted, req.VersionInfo = resp.VersionInfo, resp.VersionInfo
		s.mu.Lock()
		if s.streams[ref] != nil {
			s.held[ref] = held
		}
		s.mu.Unlock()
		s.log.Info("sds secret", append([]any{"name", ref.Name, "socket", ref.Socket, "versionInfo", resp.VersionInfo}, kv...)...)
	}
}

// secretOf reads the secret called name from a response: a certificate
// and its key, or a validation context.
func secretOf(resp *discoveryv3.DiscoveryResponse, name string) (heldSecret, []any, error) {
	for _, r := range resp.Resources {
		secret := &tlsv3.Secret{}
		if err := r.UnmarshalTo(secret); err != nil {
			return heldSecret{}, nil, err
		}
		if secret.GetName() != name {
			continue
		}
		if c := secret.GetTlsCertificate(); c != nil {
			cert, err := tls.X509KeyPair(c.GetCertificateChain().GetInlineBytes(), c.GetPrivateKey().GetInlineBytes())
			if err != nil {
				return heldSecret{}, nil, fmt.Errorf("secret %q: %w", name, err)
			}
			leaf := cert.Leaf
			var uris []string
			for _, u := range leaf.URIs {
				uris = append(uris, u.String())
			}
			return heldSecret{cert: &cert}, []any{"kind", "tls_certificate", "uris", uris, "serial", leaf.SerialNumber.String(), "issuer", leaf.Issuer.CommonName, "notAfter", leaf.NotAfter, "chainLength", len(cert.Certificate)}, nil
		}
		if vc := secret.GetValidationContext(); vc != nil {
			v, err := validationOf(vc)
			if err != nil {
				return heldSecret{}, nil, fmt.Errorf("secret %q: %w", name, err)
			}
			var domains []string
			for td := range v.SPIFFE {
				domains = append(domains, td)
			}
			sort.Strings(domains)
			return heldSecret{validation: v}, []any{"kind", "validation_context", "trustDomains", domains, "trustedCa", v.Roots != nil, "sanMatchers", len(v.Matchers)}, nil
		}
		return heldSecret{}, nil, fmt.Errorf("secret %q is neither a certificate nor a validation context", name)
	}
	return heldSecret{}, nil, fmt.Errorf("the response lacks secret %q", name)
}
