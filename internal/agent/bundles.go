package agent

import (
	"context"
	"crypto/x509"
	"sort"
	"sync"

	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/trust"
)

// Bundles are the roots each trust domain of a mesh trusts: the MeshTrusts of
// the system namespace, meshcert's own and any other (such as Kuma's for its
// Bundled identities), so that workloads of different providers in one mesh
// trust each other. They are parsed once per change of the MeshTrusts, not
// once per stream and wake-up.
type Bundles struct {
	// Cache holds the MeshTrusts of the system namespace: they are few.
	Cache           client.Reader
	SystemNamespace string

	mu sync.Mutex
	// byMesh is the parsed MeshTrusts by mesh; nil until read, and again
	// after any MeshTrust changes.
	byMesh map[string][]TrustDomainBundle
	// generation counts the changes of the MeshTrusts.
	generation uint64
}

// Generation changes whenever a MeshTrust does: an answer built from the
// bundles of one generation holds until the next.
func (b *Bundles) Generation() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.generation
}

// TrustDomainBundle is one trust domain and its roots.
type TrustDomainBundle struct {
	TrustDomain string
	Roots       []*x509.Certificate
}

// ForMesh returns the mesh's trust domains and their roots, sorted by trust
// domain. The roots of several MeshTrusts of one trust domain are joined.
// The slice is the caller's to change.
func (b *Bundles) ForMesh(ctx context.Context, mesh string) ([]TrustDomainBundle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.byMesh == nil {
		var list kuma.MeshTrustResourceList
		if err := b.Cache.List(ctx, &list, client.InNamespace(b.SystemNamespace)); err != nil {
			return nil, err
		}
		b.byMesh = parseMeshTrusts(list.Items)
	}
	return append([]TrustDomainBundle(nil), b.byMesh[mesh]...), nil
}

func parseMeshTrusts(items []kuma.MeshTrustResource) map[string][]TrustDomainBundle {
	byDomain := map[string]map[string][]*x509.Certificate{}
	for i := range items {
		mt := &items[i]
		mesh := kuma.MeshOfSecret(mt.Labels)
		if mt.Spec.TrustDomain == "" {
			continue
		}
		if byDomain[mesh] == nil {
			byDomain[mesh] = map[string][]*x509.Certificate{}
		}
		byDomain[mesh][mt.Spec.TrustDomain] = append(byDomain[mesh][mt.Spec.TrustDomain], lookup.MeshTrustRoots(mt)...)
	}
	out := map[string][]TrustDomainBundle{}
	for mesh, domains := range byDomain {
		for td, roots := range domains {
			out[mesh] = append(out[mesh], TrustDomainBundle{TrustDomain: td, Roots: trust.UniqueRoots(roots)})
		}
		sortByDomain(out[mesh])
	}
	return out
}

// RootsPEM is the PEM of one trust domain's roots, which an issued
// certificate must chain to; nil when no MeshTrust names it yet, and then
// the issuer's status.ca decides.
func (b *Bundles) RootsPEM(mesh, trustDomain string) []byte {
	bundles, err := b.ForMesh(context.Background(), mesh)
	if err != nil {
		return nil
	}
	for _, tdb := range bundles {
		if tdb.TrustDomain == trustDomain {
			return trust.EncodeRoots(tdb.Roots)
		}
	}
	return nil
}

// Watch forgets the parsed MeshTrusts and notifies every connection whenever
// a MeshTrust changes.
func (b *Bundles) Watch(ctx context.Context, mgr ctrl.Manager, updates *Updates) error {
	inf, err := mgr.GetCache().GetInformer(ctx, &kuma.MeshTrustResource{})
	if err != nil {
		return err
	}
	onChange := func() {
		b.mu.Lock()
		b.byMesh = nil
		b.generation++
		b.mu.Unlock()
		updates.NotifyAll()
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(any, any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	})
	return err
}

// withOwn adds the root an identity's certificate verified to, when no
// MeshTrust names its trust domain yet: a workload always trusts its own.
func withOwn(bundles []TrustDomainBundle, svid *SVID) []TrustDomainBundle {
	for i, b := range bundles {
		if b.TrustDomain == svid.Identity.TrustDomain {
			if len(b.Roots) == 0 {
				bundles[i].Roots = []*x509.Certificate{svid.Cert.Root}
			}
			return bundles
		}
	}
	out := append(bundles, TrustDomainBundle{TrustDomain: svid.Identity.TrustDomain, Roots: []*x509.Certificate{svid.Cert.Root}})
	sortByDomain(out)
	return out
}

func sortByDomain(bundles []TrustDomainBundle) {
	sort.Slice(bundles, func(i, j int) bool { return bundles[i].TrustDomain < bundles[j].TrustDomain })
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
