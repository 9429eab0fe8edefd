package sdsclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshcert/meshcert/internal/agent"
)

// Conn is a gRPC client of the agent's socket whose every connection is
// made as the user uid.
func Conn(socket string, uid uint32) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return DialAs(ctx, socket, uid) }))
}

// Workload is an Envoy-shaped SDS client: one stream asking for its SVID,
// by SPIFFE ID, and for ALL, Kuma's Spire provider's names; each response
// checked and ACKed, or NACKed; and, when the stream breaks, a new one
// after a jittered, growing delay, as Envoy's gRPC streams retry.
type Workload struct {
	Socket   string
	UID      uint32
	SpiffeID string
	// RetryInitial and RetryMax bound the delay between streams; Envoy's
	// are 500ms and 30s.
	RetryInitial, RetryMax time.Duration

	mu      sync.Mutex
	held    []Held
	streams int
	nacks   int
	lastErr error
}

// Held is a certificate the workload accepted: its chain verified to its
// trust domain's bundle in ALL, its key matching, its URI the one asked for.
type Held struct {
	Leaf     *x509.Certificate
	Received time.Time
}

// Run keeps a stream open until ctx ends.
func (w *Workload) Run(ctx context.Context) {
	conn, err := Conn(w.Socket, w.UID)
	if err != nil {
		w.record(func() { w.lastErr = err })
		return
	}
	defer conn.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	retryInitial, retryMax := w.RetryInitial, w.RetryMax
	if retryInitial == 0 {
		retryInitial, retryMax = 500*time.Millisecond, 30*time.Second
	}
	delay := retryInitial
	for ctx.Err() == nil {
		received, err := w.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		w.record(func() { w.lastErr = err })
		if received {
			delay = retryInitial
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(rand.Int64N(int64(delay)) + 1)):
		}
		delay = min(2*delay, retryMax)
	}
}

// stream runs one stream until it fails; received tells whether any
// response came on it.
func (w *Workload) stream(ctx context.Context, client secretv3.SecretDiscoveryServiceClient) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.StreamSecrets(ctx)
	if err != nil {
		return false, err
	}
	w.record(func() { w.streams++ })
	names := []string{w.SpiffeID, agent.AllBundlesName}
	accepted := ""
	req := w.firstRequest()
	for {
		if err := send(s, req); err != nil {
			return received, err
		}
		resp, err := s.Recv()
		if err != nil {
			return received, err
		}
		received = true
		req = &discoveryv3.DiscoveryRequest{TypeUrl: agent.SecretTypeURL, ResourceNames: names, ResponseNonce: resp.Nonce}
		if leaf, err := w.check(resp); err != nil {
			w.record(func() { w.nacks++; w.lastErr = err })
			req.VersionInfo = accepted
			req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			accepted = resp.VersionInfo
			req.VersionInfo = accepted
			w.record(func() {
				if n := len(w.held); n == 0 || w.held[n-1].Leaf.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
					w.held = append(w.held, Held{Leaf: leaf, Received: time.Now()})
				}
			})
		}
	}
}

// send sends a request on a stream. A stream the server already ended
// makes Send return io.EOF, and only Recv gives the status it ended with, as
// grpc-go documents.
func send(s secretv3.SecretDiscoveryService_StreamSecretsClient, req *discoveryv3.DiscoveryRequest) error {
	err := s.Send(req)
	if errors.Is(err, io.EOF) {
		if _, ended := s.Recv(); ended != nil {
			return ended
		}
	}
	return err
}

// firstRequest is a stream's first: Envoy's node, and the names.
func (w *Workload) firstRequest() *discoveryv3.DiscoveryRequest {
	node := &corev3.Node{Id: "sidecar~" + strconv.FormatUint(uint64(w.UID), 10), UserAgentName: "envoy"}
	return &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: agent.SecretTypeURL, ResourceNames: []string{w.SpiffeID, agent.AllBundlesName}}
}

// Once opens a stream, checks its first response, and closes it: the
// certificate, or the stream's error, as gRPC gave it.
func (w *Workload) Once(ctx context.Context, client secretv3.SecretDiscoveryServiceClient) (*x509.Certificate, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	if err := send(s, w.firstRequest()); err != nil {
		return nil, err
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	return w.check(resp)
}

// check verifies a response as Envoy would before using it.
func (w *Workload) check(resp *discoveryv3.DiscoveryResponse) (*x509.Certificate, error) {
	secrets := map[string]*tlsv3.Secret{}
	for _, r := range resp.Resources {
		s := &tlsv3.Secret{}
		if err := r.UnmarshalTo(s); err != nil {
			return nil, fmt.Errorf("resource %s: %w", r.TypeUrl, err)
		}
		secrets[s.Name] = s
	}
	svid, all := secrets[w.SpiffeID].GetTlsCertificate(), secrets[agent.AllBundlesName].GetValidationContext()
	if svid == nil || all == nil {
		return nil, fmt.Errorf("response %s lacks %s or %s", resp.VersionInfo, w.SpiffeID, agent.AllBundlesName)
	}
	chain, err := pki.DecodeX509CertificateChainBytes(svid.GetCertificateChain().GetInlineBytes())
	if err != nil {
		return nil, err
	}
	key, err := pki.DecodePrivateKeyBytes(svid.GetPrivateKey().GetInlineBytes())
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if ok, _ := pki.PublicKeyMatchesCertificate(key.Public(), leaf); !ok {
		return nil, errors.New("the private key is not the certificate's")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != w.SpiffeID {
		return nil, fmt.Errorf("the certificate names %v, not %s", leaf.URIs, w.SpiffeID)
	}
	conf := &tlsv3.SPIFFECertValidatorConfig{}
	if err := all.GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(conf); err != nil {
		return nil, fmt.Errorf("%s: %w", agent.AllBundlesName, err)
	}
	roots := x509.NewCertPool()
	for _, td := range conf.TrustDomains {
		if td.Name == leaf.URIs[0].Host {
			roots.AppendCertsFromPEM(td.GetTrustBundle().GetInlineBytes())
		}
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the certificate does not chain to trust domain %s in %s: %w", leaf.URIs[0].Host, agent.AllBundlesName, err)
	}
	return leaf, nil
}

func (w *Workload) record(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f()
}

// Current is the certificate the workload holds now, if it holds one that
// has not expired.
func (w *Workload) Current() (Held, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := len(w.held); n > 0 && time.Now().Before(w.held[n-1].Leaf.NotAfter) {
		return w.held[n-1], true
	}
	return Held{}, false
}

// History is every certificate the workload accepted, in order.
func (w *Workload) History() []Held {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Held(nil), w.held...)
}

// Stats tells how many streams the workload opened, how many responses it
// NACKed, and the last error of a stream.
func (w *Workload) Stats() (streams, nacks int, lastErr error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.streams, w.nacks, w.lastErr
}
