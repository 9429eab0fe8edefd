package reconciler

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/model"
	"github.com/meshcert/meshcert/validation"
)

// DefaultExpiration is a dataplane certificate's lifetime when the backend
// sets no dpCert.rotation.expiration, as in Kuma.
const DefaultExpiration = 24 * time.Hour

// plan is what a dataplane's certificate should be, derived from its Mesh and
// its tags.
type plan struct {
	dataplane types.NamespacedName
	mesh      *model.MeshResource
	backend   string
	issuerRef cmmeta.IssuerReference
	uris      []*url.URL
	// identityHash covers the URI SANs; issuerHash the backend's name,
	// issuerRef and caCert. A change to either reissues the certificate.
	identityHash string
	issuerHash   string
	duration     time.Duration
	timeout      time.Duration
	// trust is the backend's caCert, or nil when the root comes from the
	// issuer's status.ca.
	trust []byte
	// enabledKey names the enabled backend in the trust store.
	enabledKey backendKey
	// spec is the Mesh's parsed spec.
	spec model.MeshSpec
	// bundle is the mesh's trust bundle: the roots of every backend;
	// bundleComplete says no backend's root is still being learned.
	bundle         []byte
	bundleComplete bool
	// issuerVersion is the resourceVersion of the cert-manager issuer, so a
	// change to the issuer ends a backoff.
	issuerVersion string
}

// jitterSeed keys the renewal jitter to the dataplane.
func (p *plan) jitterSeed() string { return p.dataplane.String() }

// problem is why a plan cannot be made. A problem of the backend is reported
// on the Mesh; one of the dataplane on the Dataplane.
type problem struct {
	onMesh  bool
	reason  string
	message string
	// retry says whether waiting can help (the backend may be fixed); a
	// dataplane's own problem waits for the dataplane to change instead.
	retry bool
}

func (p *problem) Error() string { return p.reason + ": " + p.message }

// makePlan reads the dataplane's Mesh. It returns nil and no problem when the
// dataplane is not meshcert's to issue for: its mesh is missing, has mTLS off,
// or enables a backend of another type.
func (r *Reconciler) makePlan(ctx context.Context, dp *model.DataplaneResource) (*plan, *problem, error) {
	var mesh model.MeshResource
	if err := r.Client.Get(ctx, types.NamespacedName{Name: dp.MeshName()}, &mesh); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	spec, errs := model.ParseMeshSpec(mesh.Spec)
	if len(errs) > 0 {
		return nil, &problem{onMesh: true, reason: "InvalidMesh", message: errs.ToAggregate().Error()}, nil
	}
	backend := spec.EnabledCertManagerBackend()
	if backend == nil {
		return nil, nil, nil
	}
	p := &plan{
		dataplane: types.NamespacedName{Namespace: dp.Namespace, Name: dp.Name},
		mesh:      &mesh,
		spec:      spec,
		backend:   backend.Name,
		issuerRef: defaults.IssuerRef(backend.CertManager.IssuerRef),
		duration:  DefaultExpiration,
		timeout:   r.RequestTimeout,
	}
	backendProblem := func(reason, format string, args ...any) (*plan, *problem, error) {
		return nil, &problem{onMesh: true, retry: true, reason: reason, message: fmt.Sprintf("backend %q: ", backend.Name) + fmt.Sprintf(format, args...)}, nil
	}
	if d, err := validation.ParseKumaDuration(backend.DpCert.Expiration); err == nil && d > 0 {
		p.duration = d
	}
	if d, err := validation.ParseKumaDuration(backend.DpCert.RequestTimeout); err == nil && d > 0 {
		p.timeout = d
	}

	tags, errs := model.ParseDataplaneTags(dp.Spec)
	if len(errs) > 0 {
		return nil, &problem{reason: "InvalidDataplane", message: errs.ToAggregate().Error()}, nil
	}
	uris, err := model.IdentityURIs(dp.MeshName(), dp.Name, tags)
	if err != nil {
		return nil, &problem{reason: "NoIdentity", message: err.Error()}, nil
	}
	p.uris = uris
	uriStrings := make([]string, len(uris))
	for i, u := range uris {
		uriStrings[i] = u.String()
	}
	p.identityHash = hash(uriStrings...)

	if ds := backend.CertManager.CACert; ds != nil {
		env := validation.Env{SystemNamespace: r.SystemNamespace, Now: r.Clock.Now(), Lookup: r.Lookup}
		index := slices.IndexFunc(spec.MTLS.Backends, func(b model.Backend) bool { return b.Name == backend.Name })
		data, errs, _ := validation.CACert(mesh.Name, *ds, model.BackendsPath.Index(index).Child("conf", "caCert"), env)
		if len(errs) > 0 {
			return backendProblem("InvalidCACert", "%s", errs.ToAggregate().Error())
		}
		p.trust = data
	}
	p.enabledKey = certManagerKey(mesh.Name, *backend, p.trust)
	p.issuerHash = p.enabledKey.config

	if p.issuerRef.Group == defaults.IssuerGroup {
		iss, found := r.Lookup.GenericIssuer(p.issuerRef)
		state := iss.State
		p.issuerVersion = iss.ResourceVersion
		switch {
		case !found && p.issuerRef.Kind == cmapi.IssuerKind:
			return backendProblem("IssuerNotFound", "Issuer %s/%s not found; an Issuer must be in the system namespace", r.SystemNamespace, p.issuerRef.Name)
		case !found:
			return backendProblem("IssuerNotFound", "%s %s not found", p.issuerRef.Kind, p.issuerRef.Name)
		case !state.Ready:
			return backendProblem("IssuerNotReady", "%s %s is not Ready: %s", p.issuerRef.Kind, p.issuerRef.Name, strings.TrimSpace(state.Reason+" "+state.Message))
		}
	}
	return p, nil, nil
}
