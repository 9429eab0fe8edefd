// Command csiregistrar registers a CSI driver with the kubelet, as the
// csi-node-driver-registrar does for the tests' node: it serves the kubelet's
// plugin registration API on a socket of the kubelet's plugins_registry
// folder, naming the driver and the socket the kubelet reaches it on.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driver, endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type: registerapi.CSIPlugin, Name: r.driver, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	log.Printf("registered with the kubelet: %v %s", s.PluginRegistered, s.Error)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	socket := flag.String("registration-socket", "/registration/csi.spiffe.io-reg.sock", "the socket the kubelet finds in its plugins_registry folder")
	driver := flag.String("driver-name", "csi.spiffe.io", "the CSI driver's name")
	endpoint := flag.String("kubelet-registration-path", "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock", "the driver's CSI socket, as the kubelet sees it")
	flag.Parse()

	// A socket the previous run left would refuse the listen.
	if err := os.Remove(*socket); err != nil && !os.IsNotExist(err) {
		log.Fatal(err)
	}
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrar{driver: *driver, endpoint: *endpoint})
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		srv.Stop()
	}()
	log.Printf("serving the registration of %s at %s", *driver, *socket)
	if err := srv.Serve(ln); err != nil {
		log.Fatal(err)
	}
	// The kubelet unregisters a plugin whose socket is gone.
	_ = os.Remove(*socket)
}
