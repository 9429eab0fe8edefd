package dataplane

import (
	"context"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/trust"
)

// ProbeLabel marks the CertificateRequests meshcert makes only to learn a
// backend's root.
const ProbeLabel = "meshcert.io/probe"

// ReconcileMesh learns the roots of a mesh's certmanager backends that have no
// caCert and issued nothing yet, such as a backend added to rotate the CA:
// one short-lived probe certificate per backend, issued like any other, whose
// root is learned and whose key is thrown away. The root is remembered until
// the backend changes. Dataplanes are then brought up to date through the
// probe's watch.
func (r *Reconciler) ReconcileMesh(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var mesh kuma.MeshResource
	if err := r.Client.Get(ctx, req.NamespacedName, &mesh); err != nil {
		if apierrors.IsNotFound(err) {
			r.roots.Prune(req.Name, nil)
			reportMeshRoots(req.Name, nil)
			if r.PublishTrustBundles {
				if err := r.unpublishBundle(ctx, req.Name); err != nil {
					return ctrl.Result{}, err
				}
			}
			return ctrl.Result{}, r.cleanupProbes(ctx, req.Name, nil)
		}
		return ctrl.Result{}, err
	}
	spec, errs := kuma.ParseMeshSpec(mesh.Spec)
	if len(errs) > 0 {
		return ctrl.Result{}, nil
	}
	roots := r.meshRoots(mesh.Name, spec)
	r.roots.Prune(mesh.Name, roots.Keys)

	probing := map[issuance.Owner]bool{}
	var next time.Duration
	soonest := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	for _, b := range roots.Unknown {
		wait, done, err := r.probe(ctx, &mesh, b)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !done {
			probing[issuance.ProbeOwner(mesh.Name, b.Name)] = true
		}
		soonest(wait)
	}
	// A backend whose root could not be learned is probed again later.
	now := r.Clock.Now()
	for k := range roots.Keys {
		if at, failed := r.roots.RetryAt(k); failed {
			soonest(max(at.Sub(now), time.Second))
		}
	}
	if err := r.cleanupProbes(ctx, mesh.Name, probing); err != nil {
		return ctrl.Result{}, err
	}
	// With the roots the probes learned.
	learned := r.meshRoots(mesh.Name, spec)
	reportMeshRoots(mesh.Name, learned.Roots)
	if r.PublishTrustBundles {
		// A mesh meshcert issues nothing for publishes nothing.
		var err error
		if spec.EnabledCertManagerBackend() != nil {
			err = r.publishBundle(ctx, mesh.Name, learned)
		} else {
			err = r.unpublishBundle(ctx, mesh.Name)
		}
		if err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// probe drives one backend's probe a step. done says the probe has ended,
// learning the root or failing to; wait is when to look again.
func (r *Reconciler) probe(ctx context.Context, mesh *kuma.MeshResource, b kuma.Backend) (wait time.Duration, done bool, err error) {
	log := logf.FromContext(ctx).WithValues("backend", b.Name)
	out, err := r.prober.Step(ctx, trust.Probe{
		Key:         trust.CertManagerKey(mesh.Name, b, nil),
		Owner:       issuance.ProbeOwner(mesh.Name, b.Name),
		NamePrefix:  "probe." + mesh.Name + "." + b.Name,
		TrustDomain: mesh.Name,
		// The mesh's own algorithm, so that a policy that admits its
		// certificates admits its probes.
		KeyAlgorithm: issuance.KeyAlgorithmFor(mesh.Annotations, r.KeyAlgorithm),
		IssuerRef:    defaults.IssuerRef(b.CertManager.IssuerRef),
		Timeout:      b.DpCert.RequestTimeoutOr(r.RequestTimeout),
		Labels:       map[string]string{kuma.ManagedMeshLabel: kuma.LabelValue(mesh.Name), ProbeLabel: "true"},
		Annotations:  map[string]string{kuma.MeshAnnotation: mesh.Name, kuma.BackendAnnotation: b.Name},
	})
	switch {
	case err != nil:
		return 0, false, err
	case out.Root != nil:
		r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, "RootLearned", "ProbeBackend",
			"backend %q: learned its root %q; every dataplane of the mesh now trusts it", b.Name, out.Root.Subject.String())
		log.Info("Learned a backend's root", "root", out.Root.Subject.String())
	case out.Failure != nil:
		failuresTotal.WithLabelValues("RootUnknown").Inc()
		r.Recorder.Eventf(mesh, nil, corev1.EventTypeWarning, "RootUnknown", "ProbeBackend",
			"backend %q: cannot learn its root (%s); dataplanes trust the roots that are known, without it. Set conf.caCert to its CA certificate", b.Name, out.Failure.Message)
		log.Info("Cannot learn a backend's root", "reason", out.Failure.Reason, "message", out.Failure.Message)
	}
	if out.Done() {
		return 0, true, nil
	}
	return out.RetryAfter, false, nil
}

// cleanupProbes ends a mesh's probes whose owner is not probing any more:
// done, or its backend gone.
func (r *Reconciler) cleanupProbes(ctx context.Context, mesh string, probing map[issuance.Owner]bool) error {
	var list cmapi.CertificateRequestList
	if err := r.Client.List(ctx, &list, client.InNamespace(r.SystemNamespace),
		client.MatchingLabels{ProbeLabel: "true", kuma.ManagedMeshLabel: kuma.LabelValue(mesh)}); err != nil {
		return err
	}
	for _, cr := range list.Items {
		owner, ok := issuance.OwnerOf(&cr)
		if cr.Annotations[kuma.MeshAnnotation] != mesh || !ok || probing[owner] {
			continue
		}
		if err := r.prober.Cleanup(ctx, owner); err != nil {
			return err
		}
	}
	return nil
}
