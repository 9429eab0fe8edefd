package check

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
)

// maxListed is how many Dataplanes a migration result names.
const maxListed = 5

// migration says whether a Mesh whose certificates come from its enabled
// certmanager backend can drop Mesh.spec.mtls, which Kuma 3.0 removes: once
// a Ready MeshIdentity selects every Dataplane of the mesh. While only some
// have moved, the two kinds of workload must trust each other: the Dataplanes
// on the backend trust the roots of every backend of the mesh, so each
// identity's roots must be among them; the workloads of meshcert's agent
// trust only MeshTrusts, so one of trust domain <mesh>, the trust domain of
// the backend's certificates, must hold the enabled backend's roots (Kuma's
// control plane adds that root itself for the proxies it serves, Kuma
// UPGRADE.md, "The legacy mesh CA is no longer added to the MeshTrust
// bundle"). backendRoots are the roots of the mesh's backends, enabledRoots
// those of the enabled one, identityRoots those of each identity's issuer
// that are known.
func (c *Checker) migration(ctx context.Context, g group, mesh string, identities []*kuma.MeshIdentityResource,
	enabledRoots, backendRoots []*x509.Certificate, identityRoots map[string][]*x509.Certificate) error {
	var dataplanes kuma.DataplaneResourceList
	if err := c.Client.List(ctx, &dataplanes); err != nil {
		return fmt.Errorf("listing Dataplanes: %w", err)
	}
	var moved, onBackend []string
	movedTo := map[string]*kuma.MeshIdentityResource{}
	for i := range dataplanes.Items {
		dp := &dataplanes.Items[i]
		if dp.MeshName() != mesh {
			continue
		}
		name := dp.Namespace + "/" + dp.Name
		mid := kuma.SelectMeshIdentity(identities, mesh, kuma.LabelView(dp))
		switch {
		case mid == nil:
			onBackend = append(onBackend, name)
		case !meshIdentityReady(mid):
			onBackend = append(onBackend, name+" (MeshIdentity "+mid.Name+" not Ready)")
		default:
			moved = append(moved, name)
			movedTo[mid.Name] = mid
		}
	}
	slices.Sort(onBackend)
	total := len(moved) + len(onBackend)
	guide := "move the Dataplanes to a MeshIdentity before upgrading to Kuma or Kong Mesh 3.0, as docs/migration.md shows"
	switch {
	case len(onBackend) == 0:
		g.pass("migration", "all %d Dataplanes are selected by a Ready MeshIdentity (%s): Mesh.spec.mtls can be removed",
			total, strings.Join(slices.Sorted(maps.Keys(movedTo)), ", "))
		return nil
	case len(moved) == 0:
		g.add("migration", Warn, guide, "none of the %d Dataplanes is selected by a Ready MeshIdentity: all get their certificates from Mesh.spec.mtls, which Kuma 3.0 removes", total)
		return nil
	}

	var untrusted []string
	legacyTrust, err := c.heldRoots(ctx, mesh, mesh)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(movedTo)) {
		mid := movedTo[name]
		if mid.ServedBy() == kuma.ServedByAgent {
			if missing := notHeld(enabledRoots, legacyTrust); len(missing) > 0 {
				untrusted = append(untrusted, fmt.Sprintf("no MeshTrust of mesh %s trusts trust domain %s with the backend's root %s, so the workloads of MeshIdentity %s reject the certificates of the Dataplanes still on Mesh.spec.mtls",
					mesh, mesh, strings.Join(missing, ", "), name))
			}
		}
		if missing := notHeld(identityRoots[name], backendRoots); len(missing) > 0 {
			untrusted = append(untrusted, fmt.Sprintf("no backend of Mesh %s has the root %s of MeshIdentity %s's issuer, so the Dataplanes still on Mesh.spec.mtls reject its workloads' certificates",
				mesh, strings.Join(missing, ", "), name))
		}
	}
	still := listed(onBackend)
	if len(untrusted) > 0 {
		g.add("migration", Fail, "before moving more, add the identity's issuer as a backend of the Mesh and keep a MeshTrust of trust domain "+mesh+" with the enabled backend's root, as docs/migration.md shows",
			"%d of the %d Dataplanes are selected by a Ready MeshIdentity, and %s; still on Mesh.spec.mtls: %s", len(moved), total, strings.Join(untrusted, "; "), still)
		return nil
	}
	g.add("migration", Warn, "select the rest with a Ready MeshIdentity, then remove Mesh.spec.mtls, as docs/migration.md shows",
		"%d of the %d Dataplanes are selected by a Ready MeshIdentity; still on Mesh.spec.mtls: %s", len(moved), total, still)
	return nil
}

// heldRoots are the roots the MeshTrusts of mesh hold for trust domain td.
func (c *Checker) heldRoots(ctx context.Context, mesh, td string) ([]*x509.Certificate, error) {
	var list kuma.MeshTrustResourceList
	if err := c.Client.List(ctx, &list, client.InNamespace(c.SystemNamespace)); err != nil {
		return nil, fmt.Errorf("listing MeshTrusts: %w", err)
	}
	var held []*x509.Certificate
	for i := range list.Items {
		mt := &list.Items[i]
		if kuma.MeshOfSecret(mt.Labels) == mesh && mt.Spec.TrustDomain == td {
			held = append(held, mt.Roots()...)
		}
	}
	return held, nil
}

// notHeld names the roots that held lacks.
func notHeld(roots, held []*x509.Certificate) []string {
	var missing []string
	for _, root := range roots {
		if !slices.ContainsFunc(held, root.Equal) {
			missing = append(missing, subject(root))
		}
	}
	return missing
}

// listed names the first maxListed items, and how many more there are.
func listed(items []string) string {
	if len(items) <= maxListed {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:maxListed], ", "), len(items)-maxListed)
}

// condition is one of a MeshIdentity's status conditions.
type condition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

// meshIdentityReady tells whether Kuma's control plane marked the identity
// Ready, as Kuma reads it (MeshIdentityStatus.IsInitialized: a Ready
// condition with status True).
func meshIdentityReady(mid *kuma.MeshIdentityResource) bool {
	var status struct {
		Conditions []condition `json:"conditions"`
	}
	if json.Unmarshal(mid.Status, &status) != nil {
		return false
	}
	return slices.Contains(status.Conditions, condition{Type: "Ready", Status: "True"})
}
