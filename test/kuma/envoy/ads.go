package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	// The typed configurations kuma-cp's listeners hold, for dumping them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

// The xDS types this stand-in subscribes to over ADS.
const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// xdsState is what kuma-cp sent and this stand-in accepted.
type xdsState struct {
	Clusters  []*clusterv3.Cluster
	Listeners []*listenerv3.Listener
	// Endpoints are the load assignments of EDS clusters, by cluster name.
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// Versions are the accepted versions, by type.
	Versions map[string]string
}

// adsClient is Envoy's state-of-the-world ADS client: CDS and LDS, EDS for
// the clusters that ask for it, each response ACKed with its version and
// nonce or NACKed with the last accepted version, and a new stream after a
// jittered, growing delay when one breaks.
type adsClient struct {
	target  *adsTarget
	node    *corev3.Node
	log     logr.Logger
	dumpDir string
	// accepted is called after every accepted response with the state.
	accepted func(xdsState)

	dumps atomic.Int64
}

func (a *adsClient) run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if a.target.TLS {
		creds = credentials.NewTLS(a.tlsConfig())
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: a.target.ConnectTimeout}
			return d.DialContext(ctx, "tcp", addr)
		})}
	if a.target.Metadata != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(a.target.Metadata))
	}
	conn, err := grpc.NewClient("passthrough:///"+a.target.Address, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	state := &adsState{versions: map[string]string{}, endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	delay := 500 * time.Millisecond
	for ctx.Err() == nil {
		received, err := a.stream(ctx, client, state)
		if ctx.Err() != nil {
			return nil
		}
		a.log.Info("ads stream ended", "error", err.Error(), "received", received)
		if received {
			delay = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(rand.Int64N(int64(delay)) + 1)):
		}
		delay = min(2*delay, 30*time.Second)
	}
	return nil
}

// tlsConfig verifies kuma-cp's certificate as the bootstrap's validation
// context says, and sends the bootstrap's SNI; Envoy checks no hostname
// beyond the context's SAN matchers.
func (a *adsClient) tlsConfig() *tls.Config {
	conf := &tls.Config{
		ServerName:         a.target.SNI,
		MinVersion:         tlsVersion(a.target.MinTLS, tls.VersionTLS12),
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // verified below, as the validation context says
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			chain, err := parseChain(raw)
			if err != nil {
				return err
			}
			if err := a.target.Validation.verify(chain); err != nil {
				return err
			}
			if a.target.Hostname != "" {
				return chain[0].VerifyHostname(a.target.Hostname)
			}
			return nil
		},
	}
	return conf
}

// adsState survives a stream: the versions accepted and the resources.
type adsState struct {
	versions  map[string]string
	clusters  []*clusterv3.Cluster
	listeners []*listenerv3.Listener
	edsNames  []string
	endpoints map[string]*endpointv3.ClusterLoadAssignment
}

func (a *adsClient) stream(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient, st *adsState) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	a.log.Info("ads stream opened", "address", a.target.Address, "cluster", a.target.Cluster)
	first := true
	request := func(typeURL string, names []string, nonce string, nack error) error {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: st.versions[typeURL], ResourceNames: names, ResponseNonce: nonce}
		if first {
			// set_node_on_first_message_only, as kuma-cp's bootstrap asks.
			req.Node, first = a.node, false
		}
		if nack != nil {
			req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		kind := "request"
		switch {
		case nack != nil:
			kind = "nack"
		case nonce != "":
			kind = "ack"
		}
		a.log.Info("xds "+kind, "typeUrl", typeURL, "versionInfo", req.VersionInfo, "responseNonce", nonce, "resourceNames", names)
		return s.Send(req)
	}
	if err := request(clusterType, nil, "", nil); err != nil {
		return false, err
	}
	ldsRequested := false
	for {
		resp, err := s.Recv()
		if err != nil {
			return received, err
		}
		received = true
		a.dump(resp)
		a.log.Info("xds response", "typeUrl", resp.TypeUrl, "versionInfo", resp.VersionInfo, "nonce", resp.Nonce, "resources", len(resp.Resources))
		switch resp.TypeUrl {
		case clusterType:
			clusters, err := unmarshalAll[*clusterv3.Cluster](resp)
			if err != nil {
				if err := request(clusterType, nil, resp.Nonce, err); err != nil {
					return received, err
				}
				continue
			}
			st.clusters = clusters
			st.versions[clusterType] = resp.VersionInfo
			if names := edsNamesOf(clusters); !slices.Equal(names, st.edsNames) || st.versions[endpointType] == "" && len(names) > 0 {
				st.edsNames = names
				if err := request(endpointType, names, "", nil); err != nil {
					return received, err
				}
			}
			if err := request(clusterType, nil, resp.Nonce, nil); err != nil {
				return received, err
			}
			if !ldsRequested {
				ldsRequested = true
				if err := request(listenerType, nil, "", nil); err != nil {
					return received, err
				}
			}
		case endpointType:
			cla, err := unmarshalAll[*endpointv3.ClusterLoadAssignment](resp)
			if err != nil {
				if err := request(endpointType, st.edsNames, resp.Nonce, err); err != nil {
					return received, err
				}
				continue
			}
			for _, c := range cla {
				st.endpoints[c.GetClusterName()] = c
			}
			st.versions[endpointType] = resp.VersionInfo
			if err := request(endpointType, st.edsNames, resp.Nonce, nil); err != nil {
				return received, err
			}
		case listenerType:
			listeners, err := unmarshalAll[*listenerv3.Listener](resp)
			if err != nil {
				if err := request(listenerType, nil, resp.Nonce, err); err != nil {
					return received, err
				}
				continue
			}
			st.listeners = listeners
			st.versions[listenerType] = resp.VersionInfo
			if err := request(listenerType, nil, resp.Nonce, nil); err != nil {
				return received, err
			}
		default:
			if err := request(resp.TypeUrl, nil, resp.Nonce, fmt.Errorf("type %s was not requested", resp.TypeUrl)); err != nil {
				return received, err
			}
			continue
		}
		a.accepted(xdsState{Clusters: st.clusters, Listeners: st.listeners, Endpoints: maps.Clone(st.endpoints), Versions: maps.Clone(st.versions)})
	}
}

// edsNamesOf lists the clusters that take their endpoints from EDS, by
// the name they ask for.
func edsNamesOf(clusters []*clusterv3.Cluster) []string {
	var names []string
	for _, c := range clusters {
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func unmarshalAll[T proto.Message](resp *discoveryv3.DiscoveryResponse) ([]T, error) {
	var out []T
	for _, r := range resp.Resources {
		if r.GetTypeUrl() != resp.TypeUrl {
			return nil, fmt.Errorf("resource of type %s in a response of type %s", r.GetTypeUrl(), resp.TypeUrl)
		}
		m, err := r.UnmarshalNew()
		if err != nil {
			return nil, err
		}
		out = append(out, m.(T))
	}
	return out, nil
}

// dump writes a response as kuma-cp sent it, for capturing fixtures: as
// JSON when every type in it is known here, else as binary.
func (a *adsClient) dump(resp *discoveryv3.DiscoveryResponse) {
	if a.dumpDir == "" {
		return
	}
	name := fmt.Sprintf("%s-%03d-%s", a.node.GetId(), a.dumps.Add(1), filepath.Ext(resp.TypeUrl)[1:])
	raw, err := protojson.MarshalOptions{Multiline: true}.Marshal(resp)
	if err == nil {
		name += ".json"
	} else if raw, err = proto.Marshal(resp); err == nil {
		name += ".pb"
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(a.dumpDir, name), raw, 0o644)
	}
	if err != nil {
		a.log.Error(err, "dumping a response")
	}
}

func tlsVersion(v tlsv3.TlsParameters_TlsProtocol, auto uint16) uint16 {
	switch v {
	case tlsv3.TlsParameters_TLSv1_0:
		return tls.VersionTLS10
	case tlsv3.TlsParameters_TLSv1_1:
		return tls.VersionTLS11
	case tlsv3.TlsParameters_TLSv1_2:
		return tls.VersionTLS12
	case tlsv3.TlsParameters_TLSv1_3:
		return tls.VersionTLS13
	}
	return auto
}

func parseChain(raw [][]byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("the peer presented no certificate")
	}
	return chain, nil
}
