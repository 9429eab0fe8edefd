package dataplane

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/trust"
)

// plan is what a dataplane's certificate should be, derived from its Mesh and
// its tags.
type plan struct {
	dataplane types.NamespacedName
	mesh      *kuma.MeshResource
	backend   string
	issuerRef cmmeta.IssuerReference
	uris      []*url.URL
	// identityHash covers the URI SANs; issuerHash the backend's name,
	// issuerRef and caCert. A change to either reissues the certificate.
	identityHash string
	issuerHash   string
	duration     time.Duration
	timeout      time.Duration
	// keyAlgorithm is the Mesh's meshcert.io/key-algorithm, or the default.
	keyAlgorithm issuance.KeyAlgorithm
	// caCert is the backend's caCert, or nil when the root comes from the
	// issuer's status.ca.
	caCert []byte
	// enabledKey names the enabled backend in the store of roots.
	enabledKey trust.BackendKey
	// spec is the Mesh's parsed spec.
	spec kuma.MeshSpec
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

// env is where the reconciler resolves what a Mesh refers to.
func (r *Reconciler) env() lookup.Env {
	return lookup.Env{SystemNamespace: r.SystemNamespace, Now: r.Clock.Now(), Lookup: r.Lookup}
}

// makePlan reads the dataplane's Mesh. It returns nil and no problem when the
// dataplane is not meshcert's to issue for: its mesh is missing, has mTLS off,
// or enables a backend of another type.
func (r *Reconciler) makePlan(ctx context.Context, dp *kuma.DataplaneResource) (*plan, *problem, error) {
	var mesh kuma.MeshResource
	if err := r.Client.Get(ctx, types.NamespacedName{Name: dp.MeshName()}, &mesh); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	spec, errs := kuma.ParseMeshSpec(mesh.Spec)
	if len(errs) > 0 {
		return nil, &problem{onMesh: true, reason: "InvalidMesh", message: errs.ToAggregate().Error()}, nil
	}
	backend := spec.EnabledCertManagerBackend()
	if backend == nil {
		return nil, nil, nil
	}
	p := &plan{
		dataplane:    types.NamespacedName{Namespace: dp.Namespace, Name: dp.Name},
		mesh:         &mesh,
		spec:         spec,
		backend:      backend.Name,
		issuerRef:    defaults.IssuerRef(backend.CertManager.IssuerRef),
		duration:     backend.DpCert.Lifetime(),
		timeout:      backend.DpCert.RequestTimeoutOr(r.RequestTimeout),
		keyAlgorithm: issuance.KeyAlgorithmFor(mesh.Annotations, r.KeyAlgorithm),
	}
	backendProblem := func(reason, format string, args ...any) (*plan, *problem, error) {
		return nil, &problem{onMesh: true, retry: true, reason: reason, message: fmt.Sprintf("backend %q: ", backend.Name) + fmt.Sprintf(format, args...)}, nil
	}

	tags, errs := kuma.ParseDataplaneTags(dp.Spec)
	if len(errs) > 0 {
		return nil, &problem{reason: "InvalidDataplane", message: errs.ToAggregate().Error()}, nil
	}
	uris, err := kuma.IdentityURIs(dp.MeshName(), kuma.StoreName(dp), tags, kuma.LabelView(dp))
	if err != nil {
		return nil, &problem{reason: "NoIdentity", message: err.Error()}, nil
	}
	p.uris = uris
	p.identityHash = kuma.Hash(pki.URLsToString(uris)...)

	env := r.env()
	if ds := backend.CertManager.CACert; ds != nil {
		ca := lookup.ResolveCACert(mesh.Name, *ds, env)
		switch {
		case ca.Unresolved != nil:
			return backendProblem("InvalidCACert", "caCert: %s", ca.Unresolved.Message)
		case len(ca.Problems) > 0:
			return backendProblem("InvalidCACert", "caCert: %s", strings.Join(ca.Problems, "; "))
		}
		p.caCert = ca.PEM
	}
	p.enabledKey = trust.CertManagerKey(mesh.Name, *backend, p.caCert)
	p.issuerHash = p.enabledKey.Config

	state, prob := lookup.IssuerProblem(p.issuerRef, env)
	if state != nil {
		p.issuerVersion = state.ResourceVersion
	}
	if prob != nil {
		reason := "IssuerNotReady"
		if prob.Type == lookup.NotFound {
			reason = "IssuerNotFound"
		}
		return backendProblem(reason, "%s", prob.Message)
	}
	return p, nil, nil
}
