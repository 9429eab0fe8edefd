package check

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
)

// Identities checks each MeshIdentity that meshcert serves or guards, and
// each certmanager backend of a Mesh: its issuer, its root, how long they
// stay valid, and for an identity its MeshTrust and, for the agent's, its
// Mesh's meshServices.mode; then, for each Mesh whose enabled backend is a
// certmanager one, how far its move to MeshIdentity has come. With Mesh set,
// only that mesh's.
func (c *Checker) Identities(ctx context.Context, r *Report) error {
	identities, err := c.meshIdentities(ctx)
	if err != nil {
		return err
	}
	identityRoots := map[string][]*x509.Certificate{}
	for _, mid := range identities {
		if mid.ServedBy() == kuma.NotServed || !c.inScope(mid.MeshName()) {
			continue
		}
		roots, err := c.identity(ctx, group{report: r, name: fmt.Sprintf("MeshIdentity %s/%s", mid.Namespace, mid.Name)}, mid)
		if err != nil {
			return err
		}
		identityRoots[mid.Name] = roots
	}
	var meshes kuma.MeshResourceList
	if err := c.Client.List(ctx, &meshes); err != nil {
		return fmt.Errorf("listing Meshes: %w", err)
	}
	found := false
	for _, m := range meshes.Items {
		if !c.inScope(m.Name) {
			continue
		}
		found = true
		spec, errs := kuma.ParseMeshSpec(m.Spec)
		if spec.MTLS == nil {
			continue
		}
		var enabledRoots, backendRoots []*x509.Certificate
		for _, b := range spec.MTLS.Backends {
			if b.CertManager == nil {
				continue
			}
			g := group{report: r, name: fmt.Sprintf("Mesh %s, backend %s", m.Name, b.Name)}
			if len(errs) > 0 {
				g.add("configuration", Fail, "fix the Mesh: kubectl apply shows meshcert's webhook's full answer", "%s", errs.ToAggregate().Error())
				continue
			}
			mesh, backend := m.Name, b.Name
			roots, err := c.issuer(ctx, g, mesh, *b.CertManager, func(cr *cmapi.CertificateRequest) bool {
				return cr.Annotations[kuma.MeshAnnotation] == mesh && cr.Annotations[kuma.BackendAnnotation] == backend
			})
			if err != nil {
				return err
			}
			backendRoots = append(backendRoots, roots...)
			if b.Name == spec.MTLS.EnabledBackend {
				enabledRoots = roots
			}
		}
		if len(errs) == 0 && spec.EnabledCertManagerBackend() != nil {
			if err := c.migration(ctx, group{report: r, name: "Mesh " + m.Name}, m.Name, identities, enabledRoots, backendRoots, identityRoots); err != nil {
				return err
			}
		}
	}
	if c.Mesh != "" && !found {
		group{report: r, name: "Mesh " + c.Mesh}.add("Mesh", Fail, "name a Mesh that exists: kubectl get meshes", "Mesh %s does not exist", c.Mesh)
	}
	return nil
}

// inScope tells whether the checks cover mesh: every mesh, or only Mesh.
func (c *Checker) inScope(mesh string) bool { return c.Mesh == "" || c.Mesh == mesh }

// identity checks one identity, and returns its issuer's roots when they are
// known.
func (c *Checker) identity(ctx context.Context, g group, mid *kuma.MeshIdentityResource) ([]*x509.Certificate, error) {
	conf, errs := mid.CertManagerConf()
	if len(errs) > 0 {
		g.add("configuration", Fail, "fix the MeshIdentity: kubectl apply shows meshcert's webhook's full answer", "%s", errs.ToAggregate().Error())
		return nil, nil
	}
	mesh := mid.MeshName()
	roots, err := c.issuer(ctx, g, mesh, conf, func(cr *cmapi.CertificateRequest) bool {
		return cr.Annotations[kuma.MeshIdentityAnnotation] == mid.Name
	})
	if err != nil {
		return nil, err
	}
	if err := c.meshTrust(ctx, g, mid, roots); err != nil {
		return nil, err
	}
	if mid.ServedBy() == kuma.ServedByAgent {
		c.meshServices(ctx, g, mesh)
	}
	return roots, nil
}

// issuer checks an issuer, its root and its own certificate, and returns the
// roots when they are known. match picks the CertificateRequests made for
// it, whose status.ca tells the root of an issuer meshcert cannot read.
func (c *Checker) issuer(ctx context.Context, g group, mesh string, conf kuma.CertManagerConf, match func(*cmapi.CertificateRequest) bool) ([]*x509.Certificate, error) {
	env := lookup.Env{SystemNamespace: c.SystemNamespace, Now: c.Clock.Now(), Lookup: liveLookup{ctx: ctx, c: c}}
	ref := defaults.IssuerRef(conf.IssuerRef)
	what := issuerName(ref, c.SystemNamespace)
	_, problem := lookup.IssuerProblem(ref, env)
	switch {
	case problem != nil && problem.Type == lookup.LookupFailed:
		return nil, fmt.Errorf("%s", problem.Message)
	case problem != nil && problem.Type == lookup.NotFound:
		g.add("issuer", Fail, "create the issuer, or point the issuerRef (meshcert.io/issuer-name) at one that exists", "%s", problem.Message)
	case problem != nil:
		g.add("issuer", Fail, "see why: kubectl describe "+strings.ToLower(ref.Kind)+" "+ref.Name+issuerNamespaceFlag(ref, c.SystemNamespace), "%s", problem.Message)
	case ref.Group != defaults.IssuerGroup:
		g.add("issuer", Warn, "check the external issuer with its own tools", "%s is an external issuer (group %s): meshcert cannot see whether it is Ready", what, ref.Group)
	default:
		g.pass("issuer", "%s is Ready", what)
	}

	now := env.Now
	var roots []*x509.Certificate
	var issuerCert *x509.Certificate
	var source string
	if ds := conf.CACert; ds != nil {
		ca := lookup.ResolveCACert(mesh, *ds, env)
		switch {
		case ca.Unresolved != nil:
			g.add("root", Fail, "point the caCert (meshcert.io/ca-cert-secret) at the issuer's CA certificate", "the caCert cannot be read: %s", ca.Unresolved.Message)
			return nil, nil
		case !ca.OK():
			g.add("root", Fail, "point the caCert (meshcert.io/ca-cert-secret) at the issuer's CA certificate", "the caCert cannot be used: %s", strings.Join(ca.Problems, "; "))
			return nil, nil
		case ca.Source == "":
			// A file, which only Kuma's control plane can read.
		default:
			roots, source = ca.Roots(), "its caCert"
		}
	}
	caRoots, caCert, caSource, err := c.caIssuerCertificates(ctx, ref)
	if err != nil {
		return nil, err
	}
	issuerCert = caCert
	if roots == nil {
		roots, source = caRoots, caSource
	}
	if roots == nil || issuerCert == nil {
		requests, err := c.requests(ctx, func(cr *cmapi.CertificateRequest) bool { return match(cr) && len(cr.Status.Certificate) > 0 })
		if err != nil {
			return nil, err
		}
		if len(requests) > 0 {
			cr := requests[0]
			chain, _ := pki.DecodeX509CertificateChainBytes(cr.Status.Certificate)
			if roots == nil {
				if ca, err := pki.DecodeX509CertificateSetBytes(cr.Status.CA); err == nil {
					roots, source = ca, "status.ca of CertificateRequest "+cr.Name
				}
			}
			if issuerCert == nil && len(chain) > 1 {
				issuerCert = chain[1]
			}
		}
	}
	if len(roots) == 0 {
		g.add("root", Warn, "set meshcert.io/ca-cert-secret (or the caCert) to the issuer's CA certificate",
			"not known: no caCert names it, no CA issuer's Secret holds it, and no kept request signed by %s shows it in status.ca", what)
		return nil, nil
	}
	first := slices.MinFunc(roots, func(a, b *x509.Certificate) int { return a.NotAfter.Compare(b.NotAfter) })
	g.add("root", validity(first.NotAfter, now), "rotate to a new root before this one expires, as docs/rotation.md shows",
		"%s (from %s) %s", subject(first), source, until(first.NotAfter, now))
	switch {
	case issuerCert == nil:
		g.add("issuer certificate", Warn, "watch its expiry with the issuer's own tools",
			"not known: only a CA issuer's Secret, or a kept request's chain, shows the certificate %s signs with", what)
	case slices.ContainsFunc(roots, issuerCert.Equal):
		g.add("issuer certificate", validity(issuerCert.NotAfter, now), "renew the issuer's CA, as docs/rotation.md shows",
			"%s signs with the root itself, which %s", what, until(issuerCert.NotAfter, now))
	default:
		g.add("issuer certificate", validity(issuerCert.NotAfter, now), "renew the issuer's CA certificate",
			"%s %s", subject(issuerCert), until(issuerCert.NotAfter, now))
	}
	return roots, nil
}

// caIssuerCertificates reads the certificate of a cert-manager CA issuer
// from its Secret: the roots (its ca.crt, else the top of its chain) and the
// certificate it signs with. All are nil for any other issuer.
func (c *Checker) caIssuerCertificates(ctx context.Context, ref cmmeta.IssuerReference) (roots []*x509.Certificate, signer *x509.Certificate, source string, err error) {
	if ref.Group != defaults.IssuerGroup {
		return nil, nil, "", nil
	}
	var spec cmapi.IssuerSpec
	namespace := c.SystemNamespace
	switch ref.Kind {
	case cmapi.IssuerKind:
		var iss cmapi.Issuer
		err = c.Client.Get(ctx, client.ObjectKey{Namespace: c.SystemNamespace, Name: ref.Name}, &iss)
		spec = iss.Spec
	case cmapi.ClusterIssuerKind:
		var iss cmapi.ClusterIssuer
		err = c.Client.Get(ctx, client.ObjectKey{Name: ref.Name}, &iss)
		spec, namespace = iss.Spec, c.ClusterResourceNamespace
	default:
		return nil, nil, "", nil
	}
	if apierrors.IsNotFound(err) || err == nil && spec.CA == nil {
		return nil, nil, "", nil
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("reading %s: %w", issuerName(ref, c.SystemNamespace), err)
	}
	var secret corev1.Secret
	source = fmt.Sprintf("the CA issuer's Secret %s/%s", namespace, spec.CA.SecretName)
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: spec.CA.SecretName}, &secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, "", nil
		}
		return nil, nil, "", fmt.Errorf("reading %s: %w", source, err)
	}
	chain, err := pki.DecodeX509CertificateChainBytes(secret.Data[corev1.TLSCertKey])
	if err != nil {
		return nil, nil, "", nil
	}
	roots, err = pki.DecodeX509CertificateSetBytes(secret.Data["ca.crt"])
	if err != nil {
		roots = chain[len(chain)-1:]
	}
	return roots, chain[0], source, nil
}

// meshTrust checks that a MeshTrust of the identity's mesh trusts its trust
// domain and holds every root of its issuer.
func (c *Checker) meshTrust(ctx context.Context, g group, mid *kuma.MeshIdentityResource, roots []*x509.Certificate) error {
	if mid.Annotations[kuma.MeshTrustAnnotation] == "Disabled" {
		g.pass("MeshTrust", "turned off by %s: Disabled; another MeshTrust must trust the identity", kuma.MeshTrustAnnotation)
		return nil
	}
	mesh := mid.MeshName()
	td, err := kuma.RenderTrustDomain(mid.Spec.SpiffeID.TrustDomainTemplate(), mesh, c.Zone, kuma.LabelView(mid))
	if err != nil {
		g.add("MeshTrust", Fail, "fix spec.spiffeID.trustDomain", "cannot render the trust domain: %v", err)
		return nil
	}
	var list kuma.MeshTrustResourceList
	if err := c.Client.List(ctx, &list, client.InNamespace(c.SystemNamespace)); err != nil {
		return fmt.Errorf("listing MeshTrusts: %w", err)
	}
	var names []string
	var held []*x509.Certificate
	for i := range list.Items {
		mt := &list.Items[i]
		if kuma.MeshOfSecret(mt.Labels) == mesh && mt.Spec.TrustDomain == td {
			names = append(names, mt.Name)
			held = append(held, mt.Roots()...)
		}
	}
	eventsHint := fmt.Sprintf("meshcert's reconciler keeps it: see its logs and the identity's Events (kubectl -n %s describe meshidentity %s)", mid.Namespace, mid.Name)
	if len(names) == 0 {
		g.add("MeshTrust", Fail, eventsHint, "no MeshTrust of mesh %s trusts trust domain %s, so no other workload trusts this identity", mesh, td)
		return nil
	}
	which := "MeshTrust " + names[0] + " trusts"
	if len(names) > 1 {
		which = "MeshTrusts " + strings.Join(names, ", ") + " trust"
	}
	var missing []string
	for _, root := range roots {
		if !slices.ContainsFunc(held, root.Equal) {
			missing = append(missing, subject(root))
		}
	}
	switch {
	case len(roots) == 0:
		g.add("MeshTrust", Warn, "set meshcert.io/ca-cert-secret so that the root can be compared", "%s %s with %d roots; the issuer's root is not known to compare", which, td, len(held))
	case len(missing) > 0:
		g.add("MeshTrust", Fail, eventsHint, "%s %s without the issuer's root %s", which, td, strings.Join(missing, ", "))
	default:
		g.pass("MeshTrust", "%s %s with the issuer's root (roots held: %d)", which, td, len(held))
	}
	return nil
}

// meshServices checks the mode without which Kuma 2.14 never marks a Spire
// MeshIdentity Ready.
func (c *Checker) meshServices(ctx context.Context, g group, mesh string) {
	mode, found, err := liveLookup{ctx: ctx, c: c}.MeshServicesMode(mesh)
	hint := fmt.Sprintf("kubectl patch mesh %s --type=merge -p '{\"spec\":{\"meshServices\":{\"mode\":\"%s\"}}}'", mesh, kuma.MeshServicesExclusive)
	switch {
	case err != nil:
		g.add("meshServices", Fail, "", "cannot read Mesh %s: %v", mesh, err)
	case !found:
		g.add("meshServices", Fail, "create Mesh "+mesh, "Mesh %s does not exist", mesh)
	case mode != kuma.MeshServicesExclusive:
		g.add("meshServices", Fail, hint, "Mesh %s has spec.meshServices.mode %q, not %q: Kuma 2.14 never marks a Spire MeshIdentity Ready without it", mesh, mode, kuma.MeshServicesExclusive)
	default:
		g.pass("meshServices", "Mesh %s has spec.meshServices.mode %s", mesh, mode)
	}
}

func issuerName(ref cmmeta.IssuerReference, namespace string) string {
	if ref.Kind == cmapi.IssuerKind && ref.Group == defaults.IssuerGroup {
		return fmt.Sprintf("Issuer %s/%s", namespace, ref.Name)
	}
	return fmt.Sprintf("%s %s", ref.Kind, ref.Name)
}

func issuerNamespaceFlag(ref cmmeta.IssuerReference, namespace string) string {
	if ref.Kind == cmapi.IssuerKind {
		return " -n " + namespace
	}
	return ""
}

func subject(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return "CN=" + c.Subject.CommonName
	}
	return c.Subject.String()
}

// liveLookup answers package lookup's questions from the API server.
type liveLookup struct {
	ctx context.Context
	c   *Checker
}

var _ lookup.Lookup = liveLookup{}

func (l liveLookup) SystemSecret(name string) (*corev1.Secret, error) {
	var s corev1.Secret
	err := l.c.Client.Get(l.ctx, client.ObjectKey{Namespace: l.c.SystemNamespace, Name: name}, &s)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return &s, err
}

func (l liveLookup) Issuer(ref cmmeta.IssuerReference) (*lookup.IssuerState, error) {
	var status *cmapi.IssuerStatus
	var err error
	switch ref.Kind {
	case cmapi.IssuerKind:
		var iss cmapi.Issuer
		err = l.c.Client.Get(l.ctx, client.ObjectKey{Namespace: l.c.SystemNamespace, Name: ref.Name}, &iss)
		status = &iss.Status
	default:
		var iss cmapi.ClusterIssuer
		err = l.c.Client.Get(l.ctx, client.ObjectKey{Name: ref.Name}, &iss)
		status = &iss.Status
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	state := lookup.Readiness(status)
	return &state, nil
}

// IssuedBy is not asked by the checks, which read no inventory.
func (l liveLookup) IssuedBy(string, string) (int, error) { return 0, nil }

func (l liveLookup) MeshServicesMode(mesh string) (string, bool, error) {
	var m kuma.MeshResource
	err := l.c.Client.Get(l.ctx, client.ObjectKey{Name: mesh}, &m)
	if apierrors.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return kuma.MeshServicesMode(m.Spec), true, nil
}
