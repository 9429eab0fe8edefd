// Command kumainit stands in for kumactl in Kuma's kuma-init image on the
// tests' real node: Kuma's injector runs `/usr/bin/kumactl install
// transparent-proxy ...` as the pod's init container, which would redirect
// the pod's traffic through Envoy with iptables. Transparent proxying is not
// what the tests check, and the image has no iptables, so this prints what it
// was asked and exits successfully, leaving the pod's network as it is.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	fmt.Printf("kuma-init stand-in: no transparent proxy installed; kumactl %s\n", strings.Join(os.Args[1:], " "))
}
