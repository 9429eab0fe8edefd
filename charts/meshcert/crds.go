// Package chart exposes files of the meshcert Helm chart to Go, so the test
// cluster installs the very CRDs the chart ships.
package chart

import "embed"

// kumaCRDs holds the Kuma-compatible Mesh, Dataplane, MeshIdentity and MeshTrust CRDs.
//
//go:embed files/kuma-crds/*.yaml
var kumaCRDs embed.FS

// KumaCRDFiles returns the contents of each Kuma-compatible CRD file.
func KumaCRDFiles() ([][]byte, error) {
	entries, err := kumaCRDs.ReadDir("files/kuma-crds")
	if err != nil {
		return nil, err
	}
	var files [][]byte
	for _, e := range entries {
		b, err := kumaCRDs.ReadFile("files/kuma-crds/" + e.Name())
		if err != nil {
			return nil, err
		}
		files = append(files, b)
	}
	return files, nil
}
