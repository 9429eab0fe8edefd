package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/go-logr/logr"
)

// dialInterval is how often each outbound endpoint is dialed, standing in
// for the application's traffic; $MESHCERT_ENVOY_DIAL_INTERVAL overrides it.
const dialInterval = 2 * time.Second

// proxy applies what kuma-cp sent: SDS streams for the secrets named, a
// TLS server per inbound listener, a dialer per outbound cluster.
type proxy struct {
	log  logr.Logger
	node *corev3.Node
	ctx  context.Context

	initialized atomic.Bool
	draining    atomic.Bool

	mu        sync.Mutex
	current   *plan
	secrets   *secretStore
	inbounds  map[string]*inboundServer
	outbounds map[string]*outboundDialer
}

func newProxy(ctx context.Context, log logr.Logger, node *corev3.Node) *proxy {
	return &proxy{
		log: log, node: node, ctx: ctx,
		secrets:   newSecretStore(ctx, log, node),
		inbounds:  map[string]*inboundServer{},
		outbounds: map[string]*outboundDialer{},
	}
}

// apply is called with every accepted xDS state.
func (p *proxy) apply(s xdsState) {
	if s.Versions[clusterType] != "" && s.Versions[listenerType] != "" && !p.initialized.Swap(true) {
		p.log.Info("initialized", "clustersVersion", s.Versions[clusterType], "listenersVersion", s.Versions[listenerType])
	}
	next, err := planOf(s)
	if err != nil {
		p.log.Error(err, "plan refused: kuma-cp's TLS contexts are not served")
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if reflect.DeepEqual(next, p.current) {
		return
	}
	raw, _ := json.Marshal(next)
	p.log.Info("plan", "plan", json.RawMessage(raw))
	p.current = next
	p.secrets.keep(next.secrets())
	seen := map[string]bool{}
	for _, in := range next.Inbounds {
		seen[in.Address] = true
		if srv := p.inbounds[in.Address]; srv != nil {
			srv.use.Store(&in.TLS)
			continue
		}
		srv, err := p.serveInbound(in)
		if err != nil {
			p.log.Error(err, "inbound listener not served", "listener", in.Listener, "address", in.Address)
			continue
		}
		p.inbounds[in.Address] = srv
	}
	for addr, srv := range p.inbounds {
		if !seen[addr] {
			srv.close()
			delete(p.inbounds, addr)
		}
	}
	seen = map[string]bool{}
	for _, out := range next.Outbounds {
		seen[out.Cluster] = true
		if d := p.outbounds[out.Cluster]; d != nil {
			d.target.Store(&out)
			continue
		}
		p.outbounds[out.Cluster] = p.dialOutbound(out)
	}
	for name, d := range p.outbounds {
		if !seen[name] {
			d.cancel()
			delete(p.outbounds, name)
		}
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, srv := range p.inbounds {
		srv.close()
	}
	for _, d := range p.outbounds {
		d.cancel()
	}
}

// inboundServer serves one inbound listener's address with the TLS its
// listener asks for; use changes with kuma-cp's updates.
type inboundServer struct {
	listener net.Listener
	use      atomic.Pointer[tlsUse]
}

func (s *inboundServer) close() { s.listener.Close() }

func (p *proxy) serveInbound(in inbound) (*inboundServer, error) {
	l, err := net.Listen("tcp", in.Address)
	if err != nil {
		return nil, err
	}
	srv := &inboundServer{listener: l}
	srv.use.Store(&in.TLS)
	p.log.Info("inbound listening", "listener", in.Listener, "address", in.Address)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go p.handshakeInbound(in.Listener, conn, srv.use.Load())
		}
	}()
	return srv, nil
}

// handshakeInbound completes a client's handshake as the listener's TLS
// context says, logs it, and answers with this proxy's node id.
func (p *proxy) handshakeInbound(listener string, raw net.Conn, use *tlsUse) {
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	peer := &peerInfo{}
	conn := tls.Server(raw, &tls.Config{
		MinVersion: tlsVersion(use.MinTLS, tls.VersionTLS12),
		ClientAuth: clientAuth(use.RequireClientCert),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.secrets.certificate(use.Identities[0])
		},
		VerifyPeerCertificate: p.verifier(use, peer),
	})
	err := conn.Handshake()
	p.logHandshake("inbound handshake", err, "listener", listener, "remote", raw.RemoteAddr().String(), "peerSpiffeId", peer.id,
		"identity", use.Identities[0].Name, "validation", use.Validation.Name, "socket", use.Validation.Socket)
	if err == nil {
		fmt.Fprintln(conn, p.node.GetId())
	}
}

func clientAuth(require bool) tls.ClientAuthType {
	if require {
		return tls.RequireAnyClientCert
	}
	return tls.VerifyClientCertIfGiven
}

// peerInfo carries what the verifier saw to the log line.
type peerInfo struct{ id string }

// verifier checks a peer as the TLS context's validation secret, and its
// combined default's SAN matchers, say.
func (p *proxy) verifier(use *tlsUse, peer *peerInfo) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		chain, err := parseChain(raw)
		if err != nil {
			return err
		}
		if len(chain[0].URIs) > 0 {
			peer.id = chain[0].URIs[0].String()
		}
		v, err := p.secrets.validation(use.Validation)
		if err != nil {
			return err
		}
		return (&validation{Roots: v.Roots, SPIFFE: v.SPIFFE, Matchers: append(v.Matchers, use.Matchers...)}).verify(chain)
	}
}

func (p *proxy) logHandshake(msg string, err error, kv ...any) {
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	p.log.Info(msg, append(kv, "ok", err == nil, "result", result)...)
}

// outboundDialer dials an outbound cluster's endpoints, standing in for
// the application's traffic through it.
type outboundDialer struct {
	target atomic.Pointer[outbound]
	cancel context.CancelFunc
}

func (p *proxy) dialOutbound(out outbound) *outboundDialer {
	ctx, cancel := context.WithCancel(p.ctx)
	d := &outboundDialer{cancel: cancel}
	d.target.Store(&out)
	interval := dialInterval
	if s := os.Getenv("MESHCERT_ENVOY_DIAL_INTERVAL"); s != "" {
		if v, err := time.ParseDuration(s); err == nil {
			interval = v
		}
	}
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			target := d.target.Load()
			for _, ep := range target.Endpoints {
				if ep.Address != "" {
					p.handshakeOutbound(ctx, target, ep.Address)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return d
}

// handshakeOutbound dials one endpoint with the cluster's TLS context and
// reads the node id the other stand-in answers with.
func (p *proxy) handshakeOutbound(ctx context.Context, out *outbound, address string) {
	use := &out.TLS
	peer := &peerInfo{}
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
		ServerName:         use.SNI,
		MinVersion:         tlsVersion(use.MinTLS, tls.VersionTLS12),
		NextProtos:         use.ALPN,
		InsecureSkipVerify: true, // verified by the validation context below, as Envoy does
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.secrets.certificate(use.Identities[0])
		},
		VerifyPeerCertificate: p.verifier(use, peer),
	}}
	kv := []any{"cluster", out.Cluster, "endpoint", address, "sni", use.SNI, "identity", use.Identities[0].Name, "validation", use.Validation.Name, "socket", use.Validation.Socket}
	conn, err := dialer.DialContext(ctx, "tcp", address)
	if err != nil {
		p.logHandshake("outbound handshake", err, append(kv, "peerSpiffeId", peer.id)...)
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	answer := make([]byte, 256)
	n, readErr := conn.Read(answer)
	if readErr != nil {
		err = fmt.Errorf("reading the peer's answer: %w", readErr)
	}
	p.logHandshake("outbound handshake", err, append(kv, "peerSpiffeId", peer.id, "peerNode", string(trimNewline(answer[:n])))...)
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}

// serveAdmin serves the part of Envoy's admin API kuma-dp 2.14.3 was seen
// to use, on the bootstrap's admin address: /ready, which kuma-dp's
// readiness reporter proxies, and /healthcheck/fail, kuma-dp's drain on
// exit. Every other path is refused and logged.
func (p *proxy) serveAdmin(ctx context.Context, admin *bootstrapv3.Admin) error {
	addr := admin.GetAddress()
	var (
		l   net.Listener
		err error
	)
	switch {
	case addr.GetPipe() != nil:
		path := addr.GetPipe().GetPath()
		os.Remove(path)
		if l, err = net.Listen("unix", path); err == nil && addr.GetPipe().GetMode() != 0 {
			err = os.Chmod(path, os.FileMode(addr.GetPipe().GetMode()))
		}
	case addr.GetSocketAddress() != nil:
		sa := addr.GetSocketAddress()
		l, err = net.Listen("tcp", net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
	default:
		return errors.New("the bootstrap has no admin address")
	}
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	p.log.Info("admin listening", "address", l.Addr().String())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case p.draining.Load():
			http.Error(w, "DRAINING", http.StatusServiceUnavailable)
		case p.initialized.Load():
			fmt.Fprintln(w, "LIVE")
		default:
			http.Error(w, "PRE_INITIALIZING", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /healthcheck/fail", func(w http.ResponseWriter, r *http.Request) {
		p.draining.Store(true)
		p.log.Info("admin drain", "path", r.URL.Path)
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		p.log.Info("admin request not served", "method", r.Method, "path", r.URL.Path)
		http.NotFound(w, r)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return nil
}
