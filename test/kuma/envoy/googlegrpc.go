package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpccredentialv3 "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
)

// fileBasedMetadata is the name of Envoy's call credentials plugin that
// sends a file's content as a header with every stream.
const fileBasedMetadata = "envoy.grpc_credentials.file_based_metadata"

// googleGrpcConnectTimeout bounds a connection to a google_grpc target,
// which names no cluster, so no connect_timeout.
const googleGrpcConnectTimeout = 5 * time.Second

// googleGrpcTarget reads an ads_config's google_grpc service, as kuma-cp
// writes it when kuma-dp authenticates with a token file (Kubernetes,
// pkg/xds/bootstrap/template_v3.go buildGrpcService): the target URI, the
// root certificates of its SSL credentials, which verify the server for
// the target's host as gRPC does, and the file-based metadata that sends
// the token, read again for each stream as Envoy reloads it.
func googleGrpcTarget(g *corev3.GrpcService_GoogleGrpc) (*adsTarget, error) {
	host, _, err := net.SplitHostPort(g.GetTargetUri())
	if err != nil {
		return nil, fmt.Errorf("google_grpc target_uri %q: %w", g.GetTargetUri(), err)
	}
	t := &adsTarget{Cluster: "google_grpc " + g.GetStatPrefix(), Address: g.GetTargetUri(), ConnectTimeout: googleGrpcConnectTimeout}
	if ssl := g.GetChannelCredentials().GetSslCredentials(); ssl != nil {
		if ssl.GetPrivateKey() != nil || ssl.GetCertChain() != nil {
			return nil, errors.New("google_grpc asks for a client certificate, which this stand-in does not present")
		}
		pem, err := dataSourceBytes(ssl.GetRootCerts())
		if err != nil {
			return nil, fmt.Errorf("google_grpc root_certs: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, errors.New("google_grpc root_certs hold no certificate")
		}
		t.TLS, t.SNI, t.Hostname, t.Validation = true, host, host, &validation{Roots: roots}
	}
	for _, c := range g.GetCallCredentials() {
		plugin := c.GetFromPlugin()
		if plugin.GetName() != fileBasedMetadata {
			return nil, fmt.Errorf("google_grpc call credentials %v: only %s is spoken here", c, fileBasedMetadata)
		}
		conf := &grpccredentialv3.FileBasedMetadataConfig{}
		if err := plugin.GetTypedConfig().UnmarshalTo(conf); err != nil {
			return nil, fmt.Errorf("google_grpc call credentials: %w", err)
		}
		t.Metadata = &fileMetadata{Key: conf.GetHeaderKey(), Prefix: conf.GetHeaderPrefix(), Secret: conf.GetSecretData()}
		if t.Metadata.Key == "" {
			t.Metadata.Key = "authorization"
		}
	}
	return t, nil
}

// dataSourceBytes reads a data source: inline, or a file read now.
func dataSourceBytes(d *corev3.DataSource) ([]byte, error) {
	switch {
	case d.GetInlineBytes() != nil:
		return d.GetInlineBytes(), nil
	case d.GetInlineString() != "":
		return []byte(d.GetInlineString()), nil
	case d.GetFilename() != "":
		return os.ReadFile(d.GetFilename())
	}
	return nil, errors.New("empty data source")
}

// fileMetadata is Envoy's file-based metadata call credentials: the
// header Key with Prefix and the secret's content, read for every stream.
type fileMetadata struct {
	Key    string
	Prefix string
	Secret *corev3.DataSource
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (m *fileMetadata) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	secret, err := dataSourceBytes(m.Secret)
	if err != nil {
		return nil, err
	}
	return map[string]string{strings.ToLower(m.Key): m.Prefix + string(secret)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: Envoy
// sends the token over whatever channel its bootstrap names.
func (m *fileMetadata) RequireTransportSecurity() bool { return false }
