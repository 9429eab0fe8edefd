// Command envoy stands in for Envoy under Kuma's kuma-dp in meshcert's
// tests against a real Kuma, where no Envoy binary exists. It answers
// --version as Envoy 1.38.2 does, reads the bootstrap kuma-dp wrote,
// speaks state-of-the-world ADS to kuma-cp as Envoy does, and from the
// clusters and listeners kuma-cp sends takes the SDS cluster's socket and
// the secret names of each TLS context; it fetches exactly those over SDS,
// serves each inbound listener with them and dials each outbound cluster's
// endpoints through them. It invents nothing kuma-cp did not send. What it
// did is logged as JSON lines to $MESHCERT_ENVOY_LOG, else to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	crzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// envoyVersion is the Envoy kuma-dp 2.14.3 expects; the build SHA is
// zeros: no Envoy was built.
const (
	envoyVersion = "1.38.2"
	versionLine  = "envoy  version: 0000000000000000000000000000000000000000/" + envoyVersion + "/Clean/RELEASE/BoringSSL"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "envoy:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	flags := flag.NewFlagSet("envoy", flag.ContinueOnError)
	version := flags.Bool("version", false, "print the version")
	configPath := flags.String("config-path", "", "the bootstrap")
	// The rest of what kuma-dp passes, accepted and without effect here.
	flags.Int("drain-time-s", 0, "")
	flags.String("drain-strategy", "", "")
	flags.Bool("disable-hot-restart", false, "")
	flags.String("log-level", "", "")
	flags.String("component-log-level", "", "")
	flags.Bool("cpuset-threads", false, "")
	flags.Int("concurrency", 0, "")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *version {
		_, err := fmt.Fprintf(stdout, "\n%s\n", versionLine)
		return err
	}
	if *configPath == "" {
		return fmt.Errorf("--config-path is required")
	}
	logs, err := logOutput()
	if err != nil {
		return err
	}
	log := crzap.New(crzap.WriteTo(logs)).WithName("envoy")
	b, err := readBootstrap(*configPath)
	if err != nil {
		return err
	}
	target, err := adsTargetOf(b)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p := newProxy(ctx, log, nodeOf(b.GetNode()))
	log.Info("started", "configPath", *configPath, "adsCluster", target.Cluster, "adsAddress", target.Address, "sni", target.SNI, "nodeId", b.GetNode().GetId())
	if err := p.serveAdmin(ctx, b.GetAdmin()); err != nil {
		return err
	}
	ads := &adsClient{target: target, node: p.node, log: log, dumpDir: os.Getenv("MESHCERT_ENVOY_DUMP_DIR"), accepted: p.apply}
	err = ads.run(ctx)
	p.close()
	log.Info("stopped")
	return err
}

// logOutput is $MESHCERT_ENVOY_LOG, appended to, else stderr.
func logOutput() (io.Writer, error) {
	path := os.Getenv("MESHCERT_ENVOY_LOG")
	if path == "" {
		return os.Stderr, nil
	}
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}

// nodeOf is the bootstrap's node with what Envoy adds to it itself: its
// user agent and build version, which SPIRE's agent reads to decide
// whether to serve ALL with the SPIFFE validator.
func nodeOf(n *corev3.Node) *corev3.Node {
	node := proto.Clone(n).(*corev3.Node)
	node.UserAgentName = "envoy"
	node.UserAgentVersionType = &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
		Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 38, Patch: 2},
	}}
	return node
}
