package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"sort"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/model"
)

// Bundles are the roots each trust domain of a mesh trusts: the MeshTrusts of
// the system namespace, meshcert's own and any other (such as Kuma's for its
// Bundled identities), so that workloads of different providers in one mesh
// trust each other.
type Bundles struct {
	// Cache holds the MeshTrusts of the system namespace: they are few.
	Cache           client.Reader
	SystemNamespace string
}

// TrustDomainBundle is one trust domain and its roots.
type TrustDomainBundle struct {
	TrustDomain string
	Roots       []*x509.Certificate
}

// ForMesh returns the mesh's trust domains and their roots, sorted by trust
// domain. The roots of several MeshTrusts of one trust domain are joined.
func (b *Bundles) ForMesh(ctx context.Context, mesh string) ([]TrustDomainBundle, error) {
	var list model.MeshTrustResourceList
	if err := b.Cache.List(ctx, &list, client.InNamespace(b.SystemNamespace)); err != nil {
		return nil, err
	}
	byDomain := map[string][]*x509.Certificate{}
	for _, mt := range list.Items {
		if model.MeshOfSecret(mt.Labels) != mesh || mt.Spec.TrustDomain == "" {
			continue
		}
		for _, cb := range mt.Spec.CABundles {
			if cb.PEM == nil {
				continue
			}
			// A bundle that does not parse is the webhook's and Kuma's to
			// reject; it adds nothing here.
			roots, err := pki.DecodeX509CertificateSetBytes([]byte(cb.PEM.Value))
			if err != nil {
				continue
			}
			byDomain[mt.Spec.TrustDomain] = appendNew(byDomain[mt.Spec.TrustDomain], roots...)
		}
	}
	out := make([]TrustDomainBundle, 0, len(byDomain))
	for td, roots := range byDomain {
		out = append(out, TrustDomainBundle{TrustDomain: td, Roots: roots})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain < out[j].TrustDomain })
	return out, nil
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
			return encodeCerts(tdb.Roots)
		}
	}
	return nil
}

// Watch notifies changed whenever a MeshTrust changes.
func (b *Bundles) Watch(ctx context.Context, mgr ctrl.Manager, changed *Notifier) error {
	inf, err := mgr.GetCache().GetInformer(ctx, &model.MeshTrustResource{})
	if err != nil {
		return err
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed.Notify() },
		UpdateFunc: func(any, any) { changed.Notify() },
		DeleteFunc: func(any) { changed.Notify() },
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
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain < out[j].TrustDomain })
	return out
}

func appendNew(list []*x509.Certificate, certs ...*x509.Certificate) []*x509.Certificate {
	for _, c := range certs {
		seen := false
		for _, have := range list {
			if have.Equal(c) {
				seen = true
				break
			}
		}
		if !seen {
			list = append(list, c)
		}
	}
	return list
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
