package main

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpccredentialv3 "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshcert/meshcert/internal/testpki"
)

// kumaGoogleGrpc is the ads_config service kuma-cp 2.14.3 writes on
// Kubernetes (pkg/xds/bootstrap/template_v3.go buildGrpcService): the
// control plane's Service by name, its CA inline, the token by file.
func kumaGoogleGrpc(t *testing.T, caPEM []byte, tokenPath string) *corev3.GrpcService_GoogleGrpc {
	t.Helper()
	conf, err := anypb.New(&grpccredentialv3.FileBasedMetadataConfig{
		SecretData: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: tokenPath}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.GrpcService_GoogleGrpc{
		TargetUri:              "kuma-control-plane.kuma-system:5678",
		StatPrefix:             "ads",
		CredentialsFactoryName: fileBasedMetadata,
		ChannelCredentials: &corev3.GrpcService_GoogleGrpc_ChannelCredentials{CredentialSpecifier: &corev3.GrpcService_GoogleGrpc_ChannelCredentials_SslCredentials{
			SslCredentials: &corev3.GrpcService_GoogleGrpc_SslCredentials{RootCerts: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: caPEM}}},
		}},
		CallCredentials: []*corev3.GrpcService_GoogleGrpc_CallCredentials{{CredentialSpecifier: &corev3.GrpcService_GoogleGrpc_CallCredentials_FromPlugin{
			FromPlugin: &corev3.GrpcService_GoogleGrpc_CallCredentials_MetadataCredentialsFromPlugin{
				Name:       fileBasedMetadata,
				ConfigType: &corev3.GrpcService_GoogleGrpc_CallCredentials_MetadataCredentialsFromPlugin_TypedConfig{TypedConfig: conf},
			},
		}}},
	}
}

func TestGoogleGrpcTarget(t *testing.T) {
	ca := testpki.NewCA(t, "kuma-cp", time.Now())
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	target, err := googleGrpcTarget(kumaGoogleGrpc(t, ca.PEM, token))
	if err != nil {
		t.Fatal(err)
	}
	if target.Address != "kuma-control-plane.kuma-system:5678" || !target.TLS || target.SNI != "kuma-control-plane.kuma-system" || target.Hostname != "kuma-control-plane.kuma-system" {
		t.Errorf("target %+v", target)
	}
	if err := target.Validation.verify([]*x509.Certificate{ca.Cert}); err != nil {
		t.Errorf("the roots do not hold kuma-cp's CA: %v", err)
	}
	// The token is read for every stream, as the kubelet rotates it.
	for _, want := range []string{"first", "rotated"} {
		if err := os.WriteFile(token, []byte(want), 0o600); err != nil {
			t.Fatal(err)
		}
		md, err := target.Metadata.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(md) != 1 || md["authorization"] != want {
			t.Errorf("metadata %v, want authorization: %s", md, want)
		}
	}
}

func TestGoogleGrpcTargetRefusesOtherPlugins(t *testing.T) {
	ca := testpki.NewCA(t, "kuma-cp", time.Now())
	g := kumaGoogleGrpc(t, ca.PEM, "/token")
	g.CallCredentials[0].GetFromPlugin().Name = "envoy.grpc_credentials.aws_iam"
	if _, err := googleGrpcTarget(g); err == nil {
		t.Error("a plugin other than file-based metadata was accepted")
	}
}
