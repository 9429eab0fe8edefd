package reconciler

import (
	"context"
	"fmt"
	"net/url"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/model"
	"github.com/meshcert/meshcert/validation"
)

// ProbeLabel marks the CertificateRequests meshcert makes only to learn a
// backend's root.
const ProbeLabel = "meshcert.io/probe"

// probeDuration is a probe certificate's lifetime: it is never used.
const probeDuration = time.Hour

// ReconcileMesh learns the roots of a mesh's certmanager backends that have no
// caCert and issued nothing yet, such as a backend added to rotate the CA:
// one short-lived probe CertificateRequest per backend, whose status.ca is
// the root. The probe is deleted, and the root remembered until the backend
// changes. Dataplanes are then brought up to date through the probe's watch.
func (r *Reconciler) ReconcileMesh(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.init()
	var mesh model.MeshResource
	if err := r.Client.Get(ctx, req.NamespacedName, &mesh); err != nil {
		if apierrors.IsNotFound(err) {
			r.trust.prune(req.Name, nil)
			return ctrl.Result{}, r.cleanupProbes(ctx, req.Name, nil)
		}
		return ctrl.Result{}, err
	}
	spec, errs := model.ParseMeshSpec(mesh.Spec)
	if len(errs) > 0 {
		return ctrl.Result{}, nil
	}
	t := r.trustOf(mesh.Name, spec)
	r.trust.prune(mesh.Name, t.keys)

	keep := map[string]bool{}
	var next time.Duration
	for _, b := range t.unknown {
		name := probeName(mesh.Name, b)
		keep[name] = true
		wait, err := r.probe(ctx, &mesh, b, name)
		if err != nil {
			return ctrl.Result{}, err
		}
		if wait > 0 && (next == 0 || wait < next) {
			next = wait
		}
	}
	// A backend whose root could not be learned is tried again later.
	for k := range t.keys {
		if at, failed := r.trust.failedSince(k); failed {
			retry := max(at.Add(r.Backoff.Max).Sub(r.Clock.Now()), time.Second)
			if next == 0 || retry < next {
				next = retry
			}
		}
	}
	if err := r.cleanupProbes(ctx, mesh.Name, keep); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// probe drives one backend's probe a step, and returns when to look again.
func (r *Reconciler) probe(ctx context.Context, mesh *model.MeshResource, b model.Backend, name string) (time.Duration, error) {
	log := logf.FromContext(ctx).WithValues("backend", b.Name, "probe", name)
	key := certManagerKey(mesh.Name, b, nil)
	timeout := r.RequestTimeout
	if d, err := validation.ParseKumaDuration(b.DpCert.RequestTimeout); err == nil && d > 0 {
		timeout = d
	}
	var cr cmapi.CertificateRequest
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.SystemNamespace, Name: name}, &cr)
	if apierrors.IsNotFound(err) {
		if err := r.createProbe(ctx, mesh, b, name); err != nil {
			return 0, err
		}
		log.Info("Probing a backend for its root")
		return timeout, nil
	}
	if err != nil {
		return 0, err
	}

	ready := apiutil.GetCertificateRequestCondition(&cr, cmapi.CertificateRequestConditionReady)
	var failure string
	switch {
	case ready != nil && ready.Status == cmmeta.ConditionTrue:
		roots, err := pki.DecodeX509CertificateSetBytes(cr.Status.CA)
		if err != nil || len(roots) == 0 {
			failure = "the issuer sets no status.ca"
			break
		}
		r.trust.learn(key, roots)
		r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, "RootLearned", "ProbeBackend",
			"backend %q: learned its root %q; every dataplane of the mesh now trusts it", b.Name, roots[0].Subject.String())
		log.Info("Learned a backend's root", "root", roots[0].Subject.String())
		return 0, r.deleteRequest(ctx, &cr)
	case apiutil.CertificateRequestIsDenied(&cr):
		failure = "its probe request was denied: " + apiutil.GetCertificateRequestCondition(&cr, cmapi.CertificateRequestConditionDenied).Message
	case apiutil.CertificateRequestHasInvalidRequest(&cr):
		failure = "its probe request is invalid: " + apiutil.CertificateRequestInvalidRequestMessage(&cr)
	case ready != nil && ready.Reason == cmapi.CertificateRequestReasonFailed:
		failure = "its probe request failed: " + ready.Message
	default:
		deadline := cr.CreationTimestamp.Add(timeout)
		if now := r.Clock.Now(); now.Before(deadline) {
			return deadline.Sub(now), nil
		}
		failure = fmt.Sprintf("its probe request was not signed within %s", timeout)
	}
	r.trust.fail(key, r.Clock.Now())
	failuresTotal.WithLabelValues("RootUnknown").Inc()
	r.Recorder.Eventf(mesh, nil, corev1.EventTypeWarning, "RootUnknown", "ProbeBackend",
		"backend %q: cannot learn its root (%s); dataplanes trust the roots that are known, without it. Set conf.caCert to its CA certificate", b.Name, failure)
	log.Info("Cannot learn a backend's root", "reason", failure)
	return 0, r.deleteRequest(ctx, &cr)
}

func (r *Reconciler) createProbe(ctx context.Context, mesh *model.MeshResource, b model.Backend, name string) error {
	key, err := generateKey(ECDSAP256)
	if err != nil {
		return err
	}
	csr, err := certificateRequestPEM(key, []*url.URL{{Scheme: "spiffe", Host: mesh.Name, Path: "/meshcert-probe"}})
	if err != nil {
		return err
	}
	err = r.Client.Create(ctx, &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: r.SystemNamespace,
			Labels: map[string]string{
				model.ManagedByLabel:   model.ManagedByValue,
				model.ManagedMeshLabel: labelValue(mesh.Name),
				ProbeLabel:             "true",
			},
			Annotations: map[string]string{model.MeshAnnotation: mesh.Name, model.BackendAnnotation: b.Name},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			IssuerRef: defaults.IssuerRef(b.CertManager.IssuerRef),
			Duration:  &metav1.Duration{Duration: probeDuration},
			Usages:    usages,
		},
	})
	return client.IgnoreAlreadyExists(err)
}

// probeName is one per backend as configured.
func probeName(mesh string, b model.Backend) string {
	return limitName("probe."+mesh+"."+b.Name, "-"+certManagerKey(mesh, b, nil).config[:10])
}

// cleanupProbes deletes a mesh's probes that are not in keep.
func (r *Reconciler) cleanupProbes(ctx context.Context, mesh string, keep map[string]bool) error {
	var list cmapi.CertificateRequestList
	if err := r.Client.List(ctx, &list, client.InNamespace(r.SystemNamespace),
		client.MatchingLabels{ProbeLabel: "true", model.ManagedMeshLabel: labelValue(mesh)}); err != nil {
		return err
	}
	for i := range list.Items {
		if cr := &list.Items[i]; !keep[cr.Name] && cr.Annotations[model.MeshAnnotation] == mesh {
			if err := r.deleteRequest(ctx, cr); err != nil {
				return err
			}
		}
	}
	return nil
}
