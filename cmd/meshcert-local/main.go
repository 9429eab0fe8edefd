// Command meshcert-local runs the whole system on this machine, with no
// cluster: kube-apiserver and etcd, cert-manager's controllers, a local CA,
// and meshcert itself. `make run` starts it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/meshcert/meshcert/internal/localcluster"
)

func main() {
	fs := flag.NewFlagSet("meshcert-local", flag.ContinueOnError)
	dir := fs.String("dir", envOr("MESHCERT_LOCAL_DIR", ".local"), "Folder for the kubeconfig, the logs and the cluster's state (env MESHCERT_LOCAL_DIR).")
	systemNamespace := fs.String("system-namespace", "kong-mesh-system", "The mesh's system namespace.")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	err := localcluster.RunLocal(localcluster.SignalContext(), localcluster.LocalOptions{
		Dir:             *dir,
		Out:             os.Stdout,
		SystemNamespace: *systemNamespace,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshcert-local: %v\n", err)
		os.Exit(1)
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
