package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Fetch asks the agent at socket for the caller's X509-SVID over the SPIFFE
// Workload API, as any SPIFFE client would, and prints what it got. With
// writeDir it also writes the certificates, the key and the bundle there, as
// spire-agent api fetch x509 -write does.
func Fetch(ctx context.Context, socket, writeDir string, out io.Writer) error {
	// go-spiffe takes a unix:// URL, in which a relative path would read as
	// a host.
	abs, err := filepath.Abs(socket)
	if err != nil {
		return err
	}
	start := time.Now()
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+abs))
	if err != nil {
		return fmt.Errorf("fetching an X509-SVID from %s: %w", socket, err)
	}
	fmt.Fprintf(out, "Received %d SVID after %s\n\n", len(x509ctx.SVIDs), time.Since(start).Round(time.Millisecond))
	for i, svid := range x509ctx.SVIDs {
		leaf := svid.Certificates[0]
		fmt.Fprintf(out, "SPIFFE ID:    %s\n", svid.ID)
		fmt.Fprintf(out, "Issuer:       %s\n", leaf.Issuer)
		fmt.Fprintf(out, "Valid after:  %s\n", leaf.NotBefore.UTC().Format(time.RFC3339))
		fmt.Fprintf(out, "Valid until:  %s\n", leaf.NotAfter.UTC().Format(time.RFC3339))
		for _, b := range x509ctx.Bundles.Bundles() {
			n := len(b.X509Authorities())
			fmt.Fprintf(out, "Trusts:       %s (%d %s)\n", b.TrustDomain(), n, map[bool]string{true: "root", false: "roots"}[n == 1])
		}
		if writeDir == "" {
			continue
		}
		certs, key, err := svid.Marshal()
		if err != nil {
			return err
		}
		bundle, ok := x509ctx.Bundles.Get(svid.ID.TrustDomain())
		if !ok {
			return fmt.Errorf("no bundle for the SVID's trust domain %s", svid.ID.TrustDomain())
		}
		bundlePEM, err := bundle.Marshal()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(writeDir, 0o755); err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			data []byte
			mode os.FileMode
		}{
			{fmt.Sprintf("svid.%d.pem", i), certs, 0o644},
			{fmt.Sprintf("svid.%d.key", i), key, 0o600},
			{fmt.Sprintf("bundle.%d.pem", i), bundlePEM, 0o644},
		} {
			path := filepath.Join(writeDir, f.name)
			if err := os.WriteFile(path, f.data, f.mode); err != nil {
				return err
			}
			fmt.Fprintf(out, "Wrote %s\n", path)
		}
	}
	return nil
}
