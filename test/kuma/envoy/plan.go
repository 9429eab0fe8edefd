package main

import (
	"fmt"
	"net"
	"slices"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// plan is what kuma-cp's clusters and listeners ask of this proxy's TLS:
// the secrets to fetch over SDS, where, and which inbound listeners and
// outbound clusters use them.
type plan struct {
	Inbounds  []inbound  `json:"inbounds"`
	Outbounds []outbound `json:"outbounds"`
}

// secretRef is an SDS secret name and the socket of the cluster that
// serves it.
type secretRef struct {
	Name       string `json:"name"`
	SDSCluster string `json:"sdsCluster"`
	Socket     string `json:"socket"`
}

// tlsUse is one TLS context's secrets and checks.
type tlsUse struct {
	Identities []secretRef `json:"identities"`
	Validation secretRef   `json:"validation"`
	// Matchers are the SAN matchers of a combined validation context's
	// default, applied after the SDS validation context.
	Matchers          []*tlsv3.SubjectAltNameMatcher  `json:"-"`
	MatcherCount      int                             `json:"sanMatchers"`
	SNI               string                          `json:"sni,omitempty"`
	RequireClientCert bool                            `json:"requireClientCert,omitempty"`
	MinTLS            tlsv3.TlsParameters_TlsProtocol `json:"-"`
	ALPN              []string                        `json:"alpn,omitempty"`
}

type inbound struct {
	Listener string `json:"listener"`
	Address  string `json:"address"`
	TLS      tlsUse `json:"tls"`
}

type outbound struct {
	Cluster   string     `json:"cluster"`
	Endpoints []endpoint `json:"endpoints"`
	TLS       tlsUse     `json:"tls"`
}

// secrets lists every secret the plan uses, once each, in order.
func (p *plan) secrets() []secretRef {
	var refs []secretRef
	add := func(u tlsUse) {
		for _, r := range append(slices.Clone(u.Identities), u.Validation) {
			if !slices.Contains(refs, r) {
				refs = append(refs, r)
			}
		}
	}
	for _, in := range p.Inbounds {
		add(in.TLS)
	}
	for _, out := range p.Outbounds {
		add(out.TLS)
	}
	return refs
}

// planOf reads the plan from what kuma-cp sent. A TLS context whose
// secrets do not come from an SDS cluster with a Unix socket is an error:
// this stand-in fetches secrets only as kuma-cp's Spire provider names them.
func planOf(s xdsState) (*plan, error) {
	sockets := map[string]string{}
	for _, c := range s.Clusters {
		if eps := endpointsOf(c.GetLoadAssignment()); len(eps) == 1 && eps[0].Pipe != "" {
			sockets[c.GetName()] = eps[0].Pipe
		}
	}
	p := &plan{}
	for _, l := range s.Listeners {
		if l.GetTrafficDirection() != corev3.TrafficDirection_INBOUND {
			continue
		}
		use, found, err := listenerTLS(l, sockets)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
		if !found {
			continue
		}
		sa := l.GetAddress().GetSocketAddress()
		p.Inbounds = append(p.Inbounds, inbound{Listener: l.GetName(), Address: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), TLS: use})
	}
	for _, c := range s.Clusters {
		upstream, err := upstreamTLSOf(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
		if upstream == nil {
			continue
		}
		use, err := tlsUseOf(upstream.GetCommonTlsContext(), sockets)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
		use.SNI = upstream.GetSni()
		eps := endpointsOf(c.GetLoadAssignment())
		if c.GetType() == clusterv3.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			eps = endpointsOf(s.Endpoints[name])
		}
		p.Outbounds = append(p.Outbounds, outbound{Cluster: c.GetName(), Endpoints: eps, TLS: use})
	}
	return p, nil
}

// listenerTLS is the TLS context of a listener's filter chains; all its
// TLS chains must agree.
func listenerTLS(l *listenerv3.Listener, sockets map[string]string) (tlsUse, bool, error) {
	var use tlsUse
	found := false
	for _, fc := range l.GetFilterChains() {
		ts := fc.GetTransportSocket()
		if ts == nil {
			continue
		}
		downstream := &tlsv3.DownstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(downstream); err != nil {
			return tlsUse{}, false, fmt.Errorf("filter chain %s: transport socket %s: %w", fc.GetName(), ts.GetName(), err)
		}
		// A chain with inline certificates is kuma-cp's own mTLS for
		// Envoy's admin API (Kuma v2.14.3 admin_proxy_generator.go,
		// ServerSideStaticMTLS on Kubernetes), not the mesh identity: this
		// stand-in serves the admin API on the bootstrap's address only.
		if len(downstream.GetCommonTlsContext().GetTlsCertificates()) > 0 {
			continue
		}
		u, err := tlsUseOf(downstream.GetCommonTlsContext(), sockets)
		if err != nil {
			return tlsUse{}, false, fmt.Errorf("filter chain %s: %w", fc.GetName(), err)
		}
		u.RequireClientCert = downstream.GetRequireClientCertificate().GetValue()
		if found && !sameUse(use, u) {
			return tlsUse{}, false, fmt.Errorf("filter chains %s and another ask for different secrets", fc.GetName())
		}
		use, found = u, true
	}
	return use, found, nil
}

func sameUse(a, b tlsUse) bool {
	return slices.Equal(a.Identities, b.Identities) && a.Validation == b.Validation && a.RequireClientCert == b.RequireClientCert
}

// upstreamTLSOf is a cluster's upstream TLS context: its transport socket,
// or the one of its transport socket matches; nil for a plaintext cluster.
func upstreamTLSOf(c *clusterv3.Cluster) (*tlsv3.UpstreamTlsContext, error) {
	sockets := []*corev3.TransportSocket{c.GetTransportSocket()}
	for _, m := range c.GetTransportSocketMatches() {
		sockets = append(sockets, m.GetTransportSocket())
	}
	var found *tlsv3.UpstreamTlsContext
	for _, ts := range sockets {
		if ts == nil || ts.GetTypedConfig().MessageIs(&tlsv3.UpstreamTlsContext{}) == false {
			continue
		}
		upstream := &tlsv3.UpstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(upstream); err != nil {
			return nil, err
		}
		if found != nil {
			return nil, fmt.Errorf("more than one upstream TLS context")
		}
		found = upstream
	}
	return found, nil
}

// tlsUseOf reads the SDS secret names of a TLS context.
func tlsUseOf(common *tlsv3.CommonTlsContext, sockets map[string]string) (tlsUse, error) {
	use := tlsUse{MinTLS: common.GetTlsParams().GetTlsMinimumProtocolVersion(), ALPN: common.GetAlpnProtocols()}
	if len(common.GetTlsCertificates()) > 0 {
		return tlsUse{}, fmt.Errorf("inline certificates, not SDS")
	}
	for _, c := range common.GetTlsCertificateSdsSecretConfigs() {
		ref, err := refOf(c, sockets)
		if err != nil {
			return tlsUse{}, err
		}
		use.Identities = append(use.Identities, ref)
	}
	if len(use.Identities) == 0 {
		return tlsUse{}, fmt.Errorf("no tls_certificate_sds_secret_configs")
	}
	var vref *tlsv3.SdsSecretConfig
	switch vc := common.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		vref = vc.ValidationContextSdsSecretConfig
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		vref = vc.CombinedValidationContext.GetValidationContextSdsSecretConfig()
		use.Matchers = vc.CombinedValidationContext.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	default:
		return tlsUse{}, fmt.Errorf("validation context %T, not from SDS", vc)
	}
	ref, err := refOf(vref, sockets)
	if err != nil {
		return tlsUse{}, err
	}
	use.Validation, use.MatcherCount = ref, len(use.Matchers)
	return use, nil
}

// refOf follows an SDS secret config to the socket of its cluster.
func refOf(c *tlsv3.SdsSecretConfig, sockets map[string]string) (secretRef, error) {
	grpcServices := c.GetSdsConfig().GetApiConfigSource().GetGrpcServices()
	if len(grpcServices) != 1 || grpcServices[0].GetEnvoyGrpc() == nil {
		return secretRef{}, fmt.Errorf("secret %q: its sds_config names no one envoy_grpc cluster", c.GetName())
	}
	cluster := grpcServices[0].GetEnvoyGrpc().GetClusterName()
	socket, ok := sockets[cluster]
	if !ok {
		return secretRef{}, fmt.Errorf("secret %q: SDS cluster %q has no Unix socket endpoint", c.GetName(), cluster)
	}
	return secretRef{Name: c.GetName(), SDSCluster: cluster, Socket: socket}, nil
}
