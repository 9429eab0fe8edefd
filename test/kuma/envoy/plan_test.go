package main

import (
	"os"
	"path/filepath"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The names and socket kuma-cp sent in the captured responses.
const (
	capturedSocket = "/tmp/kuma2425215568/spire.sock"
	spireCluster   = "system_identity_sds-spire-agent"
)

func TestADSTargetOf(t *testing.T) {
	tests := map[string]struct {
		change  func(*bootstrapv3.Bootstrap)
		want    *adsTarget
		wantErr bool
	}{
		"kuma-dp's bootstrap": {
			change: func(*bootstrapv3.Bootstrap) {},
			want:   &adsTarget{Cluster: "ads_cluster", Address: "127.0.0.1:25678", ConnectTimeout: 1e9, SNI: "127.0.0.1", MinTLS: tlsv3.TlsParameters_TLSv1_2, TLS: true},
		},
		"delta xDS": {
			change: func(b *bootstrapv3.Bootstrap) {
				b.DynamicResources.AdsConfig.ApiType = corev3.ApiConfigSource_DELTA_GRPC
			},
			wantErr: true,
		},
		"the validation secret missing": {
			change:  func(b *bootstrapv3.Bootstrap) { b.StaticResources.Secrets = nil },
			wantErr: true,
		},
		"the ads cluster missing": {
			change:  func(b *bootstrapv3.Bootstrap) { b.StaticResources.Clusters = b.StaticResources.Clusters[:1] },
			wantErr: true,
		},
		"a client certificate asked for": {
			change: func(b *bootstrapv3.Bootstrap) {
				c := b.StaticResources.Clusters[1]
				upstream := &tlsv3.UpstreamTlsContext{}
				must(t, c.TransportSocket.GetTypedConfig().UnmarshalTo(upstream))
				upstream.CommonTlsContext.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: "client"}}
				c.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, upstream)}
			},
			wantErr: true,
		},
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "backend-bootstrap.yaml"))
	must(t, err)
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := parseBootstrap(raw)
			must(t, err)
			test.change(b)
			got, err := adsTargetOf(b)
			if (err != nil) != test.wantErr {
				t.Fatalf("error %v, want one: %v", err, test.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(test.want, got, cmpopts.IgnoreFields(adsTarget{}, "Validation")); diff != "" {
				t.Errorf("target (-want +got):\n%s", diff)
			}
			var sans []string
			for _, m := range got.Validation.Matchers {
				sans = append(sans, m.GetSanType().String()+"="+m.GetMatcher().GetExact())
			}
			if diff := cmp.Diff([]string{"DNS=127.0.0.1", "IP_ADDRESS=127.0.0.1"}, sans); diff != "" || got.Validation.Roots == nil {
				t.Errorf("validation: roots %v, SAN matchers (-want +got):\n%s", got.Validation.Roots != nil, diff)
			}
		})
	}
}

// adminListener is the listener kuma-cp 2.14.3 sends on Kubernetes for
// Envoy's admin API (admin_proxy_generator.go): inbound, TLS with the
// certificate inline (ServerSideStaticMTLS).
func adminListener(t *testing.T) *listenerv3.Listener {
	t.Helper()
	downstream, err := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "chain"}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name:             "kuma:envoy:admin",
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		Address:          &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.203.0.7", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 9901}}}},
		FilterChains: []*listenerv3.FilterChain{{TransportSocket: &corev3.TransportSocket{
			Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: downstream},
		}}},
	}
}

func TestPlanOf(t *testing.T) {
	ref := func(name string) secretRef {
		return secretRef{Name: name, SDSCluster: spireCluster, Socket: capturedSocket}
	}
	all := ref("ALL")
	backendID, webID := "spiffe://default.default.mesh.local/workload/backend", "spiffe://default.default.mesh.local/workload/web"
	tests := map[string]struct {
		state        xdsState
		want         *plan
		wantMatchers []string
		wantErr      bool
	}{
		"backend: one inbound": {
			state: xdsState{Clusters: clustersOf(t, "backend"), Listeners: listenersOf(t, "backend")},
			want: &plan{Inbounds: []inbound{{Listener: "inbound:127.0.0.1:40407", Address: "127.0.0.1:40407",
				TLS: tlsUse{Identities: []secretRef{ref(backendID)}, Validation: all, RequireClientCert: true}}}},
		},
		"web: an inbound and an outbound to backend": {
			state: xdsState{Clusters: clustersOf(t, "web"), Listeners: listenersOf(t, "web"), Endpoints: endpointsFixture(t)},
			want: &plan{
				Inbounds: []inbound{{Listener: "inbound:127.0.0.1:46227", Address: "127.0.0.1:46227",
					TLS: tlsUse{Identities: []secretRef{ref(webID)}, Validation: all, RequireClientCert: true}}},
				Outbounds: []outbound{{Cluster: "default_backend__default_msvc_40407", Endpoints: []endpoint{{Address: "127.0.0.1:40407"}},
					TLS: tlsUse{Identities: []secretRef{ref(webID)}, Validation: all, MatcherCount: 2, SNI: "sni.msvc.default.default.backend.40407", ALPN: []string{"kuma"}}}},
			},
			wantMatchers: []string{"URI=" + backendID, "URI=spiffe://default/backend"},
		},
		"web before EDS: the outbound without endpoints": {
			state: xdsState{Clusters: clustersOf(t, "web"), Listeners: listenersOf(t, "web")},
			want: &plan{
				Inbounds: []inbound{{Listener: "inbound:127.0.0.1:46227", Address: "127.0.0.1:46227",
					TLS: tlsUse{Identities: []secretRef{ref(webID)}, Validation: all, RequireClientCert: true}}},
				Outbounds: []outbound{{Cluster: "default_backend__default_msvc_40407",
					TLS: tlsUse{Identities: []secretRef{ref(webID)}, Validation: all, MatcherCount: 2, SNI: "sni.msvc.default.default.backend.40407", ALPN: []string{"kuma"}}}},
			},
			wantMatchers: []string{"URI=" + backendID, "URI=spiffe://default/backend"},
		},
		"backend on Kubernetes: kuma-cp's admin listener with static mTLS is left alone": {
			state: xdsState{Clusters: clustersOf(t, "backend"), Listeners: append(listenersOf(t, "backend"), adminListener(t))},
			want: &plan{Inbounds: []inbound{{Listener: "inbound:127.0.0.1:40407", Address: "127.0.0.1:40407",
				TLS: tlsUse{Identities: []secretRef{ref(backendID)}, Validation: all, RequireClientCert: true}}}},
		},
		"no SDS cluster": {
			state:   xdsState{Clusters: without(clustersOf(t, "backend"), spireCluster), Listeners: listenersOf(t, "backend")},
			wantErr: true,
		},
		"listeners only: no socket for the names": {
			state:   xdsState{Listeners: listenersOf(t, "web")},
			wantErr: true,
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := planOf(test.state)
			if (err != nil) != test.wantErr {
				t.Fatalf("error %v, want one: %v", err, test.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(test.want, got, cmpopts.IgnoreFields(tlsUse{}, "Matchers", "MinTLS")); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
			var matchers []string
			for _, out := range got.Outbounds {
				for _, m := range out.TLS.Matchers {
					matchers = append(matchers, m.GetSanType().String()+"="+m.GetMatcher().GetExact())
				}
			}
			if diff := cmp.Diff(test.wantMatchers, matchers); diff != "" {
				t.Errorf("SAN matchers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]secretRef{ref(map[bool]string{true: webID, false: backendID}[len(got.Outbounds) > 0]), all}, got.secrets()); diff != "" {
				t.Errorf("secrets (-want +got):\n%s", diff)
			}
		})
	}
}

func clustersOf(t *testing.T, dataplane string) []*clusterv3.Cluster {
	return resourcesOf[*clusterv3.Cluster](t, dataplane+"-clusters.json")
}

func listenersOf(t *testing.T, dataplane string) []*listenerv3.Listener {
	return resourcesOf[*listenerv3.Listener](t, dataplane+"-listeners.json")
}

func endpointsFixture(t *testing.T) map[string]*endpointv3.ClusterLoadAssignment {
	eds := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, cla := range resourcesOf[*endpointv3.ClusterLoadAssignment](t, "web-endpoints.json") {
		eds[cla.GetClusterName()] = cla
	}
	return eds
}

func without(clusters []*clusterv3.Cluster, name string) []*clusterv3.Cluster {
	var kept []*clusterv3.Cluster
	for _, c := range clusters {
		if c.GetName() != name {
			kept = append(kept, c)
		}
	}
	return kept
}

// resourcesOf reads a captured DiscoveryResponse.
func resourcesOf[T proto.Message](t *testing.T, file string) []T {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", file))
	must(t, err)
	resp := &discoveryv3.DiscoveryResponse{}
	must(t, protojson.Unmarshal(raw, resp))
	out, err := unmarshalAll[T](resp)
	must(t, err)
	return out
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	must(t, err)
	return a
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
