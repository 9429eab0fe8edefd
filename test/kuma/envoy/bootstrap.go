package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// The typed configurations kuma-cp's bootstrap holds, for protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/regex_engines/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// adsTarget is where and how the bootstrap says to reach the ADS server:
// its ads_cluster's one endpoint and TLS settings, nothing more.
type adsTarget struct {
	Cluster        string
	Address        string
	ConnectTimeout time.Duration
	SNI            string
	MinTLS         tlsv3.TlsParameters_TlsProtocol
	// Validation is the server certificate's validation context, resolved
	// from the bootstrap's static secrets; nil when the cluster is plaintext.
	Validation *validation
	TLS        bool
	// Hostname, when set, is the name the server's certificate must hold,
	// as gRPC checks for a google_grpc target.
	Hostname string
	// Metadata, when set, are the call credentials sent with every stream.
	Metadata *fileMetadata
}

// readBootstrap reads the YAML bootstrap kuma-dp wrote.
func readBootstrap(path string) (*bootstrapv3.Bootstrap, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseBootstrap(raw)
}

func parseBootstrap(raw []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// adsTargetOf follows the bootstrap's ads_config to its static cluster.
func adsTargetOf(b *bootstrapv3.Bootstrap) (*adsTarget, error) {
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC {
		return nil, fmt.Errorf("ads_config api_type %s: only state-of-the-world GRPC is spoken here", ads.GetApiType())
	}
	if len(ads.GetGrpcServices()) == 1 && ads.GetGrpcServices()[0].GetGoogleGrpc() != nil {
		return googleGrpcTarget(ads.GetGrpcServices()[0].GetGoogleGrpc())
	}
	if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc() == nil {
		return nil, errors.New("ads_config must name exactly one envoy_grpc cluster or google_grpc service")
	}
	name := ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	var cluster *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			cluster = c
		}
	}
	if cluster == nil {
		return nil, fmt.Errorf("ads cluster %q is not a static cluster of the bootstrap", name)
	}
	t := &adsTarget{Cluster: name, ConnectTimeout: cluster.GetConnectTimeout().AsDuration()}
	eps := endpointsOf(cluster.GetLoadAssignment())
	if len(eps) != 1 || eps[0].Pipe != "" {
		return nil, fmt.Errorf("ads cluster %q must have exactly one socket address, has %v", name, eps)
	}
	t.Address = eps[0].Address
	ts := cluster.GetTransportSocket()
	if ts == nil {
		return t, nil
	}
	upstream := &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(upstream); err != nil {
		return nil, fmt.Errorf("ads cluster %q transport socket: %w", name, err)
	}
	common := upstream.GetCommonTlsContext()
	if len(common.GetTlsCertificates()) > 0 || len(common.GetTlsCertificateSdsSecretConfigs()) > 0 {
		return nil, fmt.Errorf("ads cluster %q asks for a client certificate, which this stand-in does not present", name)
	}
	t.TLS, t.SNI, t.MinTLS = true, upstream.GetSni(), common.GetTlsParams().GetTlsMinimumProtocolVersion()
	v, err := staticValidation(b, common)
	if err != nil {
		return nil, fmt.Errorf("ads cluster %q: %w", name, err)
	}
	t.Validation = v
	return t, nil
}

// staticValidation resolves a validation context that is inline or named
// among the bootstrap's static secrets.
func staticValidation(b *bootstrapv3.Bootstrap, common *tlsv3.CommonTlsContext) (*validation, error) {
	if vc := common.GetValidationContext(); vc != nil {
		return validationOf(vc)
	}
	ref := common.GetValidationContextSdsSecretConfig()
	if ref == nil {
		return nil, errors.New("no validation context: the server would not be verified")
	}
	if ref.GetSdsConfig() != nil {
		return nil, fmt.Errorf("validation context %q comes from SDS, not from the bootstrap", ref.GetName())
	}
	for _, s := range b.GetStaticResources().GetSecrets() {
		if s.GetName() == ref.GetName() {
			return validationOf(s.GetValidationContext())
		}
	}
	return nil, fmt.Errorf("validation context %q is not a static secret of the bootstrap", ref.GetName())
}

// validationOf reads an inline validation context: trusted CA (bytes or
// file) and SAN matchers.
func validationOf(vc *tlsv3.CertificateValidationContext) (*validation, error) {
	if vc == nil {
		return nil, errors.New("empty validation context")
	}
	v := &validation{Matchers: vc.GetMatchTypedSubjectAltNames()}
	var pem []byte
	switch {
	case vc.GetTrustedCa().GetInlineBytes() != nil:
		pem = vc.GetTrustedCa().GetInlineBytes()
	case vc.GetTrustedCa().GetInlineString() != "":
		pem = []byte(vc.GetTrustedCa().GetInlineString())
	case vc.GetTrustedCa().GetFilename() != "":
		var err error
		if pem, err = os.ReadFile(vc.GetTrustedCa().GetFilename()); err != nil {
			return nil, err
		}
	}
	if pem != nil {
		v.Roots = x509.NewCertPool()
		if !v.Roots.AppendCertsFromPEM(pem) {
			return nil, errors.New("trusted_ca holds no certificate")
		}
	}
	if vc.GetCustomValidatorConfig() != nil {
		spiffe, err := spiffeRootsOf(vc.GetCustomValidatorConfig())
		if err != nil {
			return nil, err
		}
		v.SPIFFE = spiffe
	}
	if v.Roots == nil && v.SPIFFE == nil {
		return nil, errors.New("validation context has neither trusted_ca nor a SPIFFE validator")
	}
	return v, nil
}

// endpoint is one address of a cluster: a socket address or a pipe.
type endpoint struct {
	Address string `json:"address,omitempty"`
	Pipe    string `json:"pipe,omitempty"`
}

// endpointsOf lists a load assignment's addresses, in order.
func endpointsOf(cla *endpointv3.ClusterLoadAssignment) []endpoint {
	var eps []endpoint
	for _, locality := range cla.GetEndpoints() {
		for _, lb := range locality.GetLbEndpoints() {
			addr := lb.GetEndpoint().GetAddress()
			switch {
			case addr.GetPipe() != nil:
				eps = append(eps, endpoint{Pipe: addr.GetPipe().GetPath()})
			case addr.GetSocketAddress() != nil:
				sa := addr.GetSocketAddress()
				eps = append(eps, endpoint{Address: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))})
			}
		}
	}
	return eps
}
