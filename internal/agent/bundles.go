package agent

import (
	"context"
	"crypto/x509"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
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
	// after any MeshTrust changes. Its bundles are shared: nobody changes
	// them.
	byMesh map[string][]*x509bundle.Bundle
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

// ForMesh returns the bundles of the mesh's trust domains, sorted by trust
// domain. The roots of several MeshTrusts of one trust domain are joined.
// The slice is the caller's to change; the bundles are not.
func (b *Bundles) ForMesh(ctx context.Context, mesh string) ([]*x509bundle.Bundle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.byMesh == nil {
		var list kuma.MeshTrustResourceList
		if err := b.Cache.List(ctx, &list, client.InNamespace(b.SystemNamespace)); err != nil {
			return nil, err
		}
		b.byMesh = parseMeshTrusts(list.Items)
	}
	return slices.Clone(b.byMesh[mesh]), nil
}

// parseMeshTrusts reads the bundles of each mesh. A MeshTrust whose trust
// domain is not one can vouch for no SPIFFE ID, and is left out.
func parseMeshTrusts(items []kuma.MeshTrustResource) map[string][]*x509bundle.Bundle {
	byDomain := map[string]map[spiffeid.TrustDomain][]*x509.Certificate{}
	for i := range items {
		mt := &items[i]
		mesh := kuma.MeshOfSecret(mt.Labels)
		td, err := spiffeid.TrustDomainFromString(mt.Spec.TrustDomain)
		if err != nil {
			continue
		}
		if byDomain[mesh] == nil {
			byDomain[mesh] = map[spiffeid.TrustDomain][]*x509.Certificate{}
		}
		byDomain[mesh][td] = append(byDomain[mesh][td], mt.Roots()...)
	}
	out := map[string][]*x509bundle.Bundle{}
	for mesh, domains := range byDomain {
		for td, roots := range domains {
			out[mesh] = append(out[mesh], x509bundle.FromX509Authorities(td, trust.UniqueRoots(roots)))
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
	for _, b := range bundles {
		if b.TrustDomain().Name() == trustDomain {
			return trust.EncodeRoots(b.X509Authorities())
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
func withOwn(bundles []*x509bundle.Bundle, svid *SVID) []*x509bundle.Bundle {
	own := x509bundle.FromX509Authorities(svid.ID.TrustDomain(), []*x509.Certificate{svid.Root})
	for i, b := range bundles {
		if b.TrustDomain() == own.TrustDomain() {
			if b.Empty() {
				bundles[i] = own
			}
			return bundles
		}
	}
	out := append(bundles, own)
	sortByDomain(out)
	return out
}

func sortByDomain(bundles []*x509bundle.Bundle) {
	slices.SortFunc(bundles, func(a, b *x509bundle.Bundle) int { return a.TrustDomain().Compare(b.TrustDomain()) })
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
