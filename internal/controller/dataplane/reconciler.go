// Package dataplane delivers each dataplane of a mesh whose enabled mTLS
// backend is certmanager its certificate as a Secret, and keeps it current
// through renewals, identity changes and CA rotations. It plans the identity,
// asks package issuance for the certificate, and writes the Secret; a second
// controller learns the roots of backends that issued nothing yet.
package dataplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/trust"
)

// Options configure a Reconciler.
type Options struct {
	// Client reads from the informer cache and writes to the API server.
	Client client.Client
	// APIReader reads from the API server: only to see whether a Secret
	// that meshcert does not manage still holds a dataplane's Secret name.
	APIReader client.Reader
	// Lookup answers for mesh Secrets and issuers, and counts the delivered
	// certificates.
	Lookup          *lookup.Index
	Recorder        events.EventRecorder
	Clock           clock.PassiveClock
	SystemNamespace string
	KeyAlgorithm    issuance.KeyAlgorithm
	// RequestTimeout bounds the wait for a CertificateRequest, unless the
	// backend's dpCert.requestTimeout says otherwise.
	RequestTimeout time.Duration
	// KeepRequests keeps issued CertificateRequests for auditing.
	KeepRequests bool
	Backoff      issuance.BackoffPolicy
	// SwitchWindow spreads the reissues of a switch of enabled backend.
	SwitchWindow time.Duration
	// MaxInFlight caps the CertificateRequests open at once; 0 is no cap.
	MaxInFlight int
	// RequestAnnotations are added to every CertificateRequest.
	RequestAnnotations map[string]string
	// PublishTrustBundles keeps each mesh's roots in a ConfigMap of the
	// system namespace, for clients outside the mesh.
	PublishTrustBundles bool
}

// Reconciler keeps one dataplane's certificate at a time; controller-runtime
// never runs two reconciles of the same dataplane at once.
type Reconciler struct {
	Options
	issuer   *issuance.Issuer
	backoff  *issuance.Backoff
	roots    *trust.Store
	prober   *trust.Prober
	switches *switches
	// conflicts are the dataplanes whose Secret name is held by a Secret
	// meshcert does not manage.
	conflicts sync.Map
	// dataplaneTurns and meshTurns wake the dataplanes and the probes whose
	// turn at the cap on requests in flight has come.
	dataplaneTurns, meshTurns chan event.GenericEvent
}

// New returns a Reconciler, with the issuer it asks for certificates.
func New(o Options) *Reconciler {
	r := &Reconciler{
		Options:        o,
		backoff:        issuance.NewBackoff(o.Backoff),
		roots:          trust.NewStore(),
		switches:       newSwitches(o.SwitchWindow),
		dataplaneTurns: make(chan event.GenericEvent, 1024),
		meshTurns:      make(chan event.GenericEvent, 64),
	}
	r.issuer = issuance.New(issuance.Options{
		Client:      o.Client,
		Namespace:   o.SystemNamespace,
		Clock:       o.Clock,
		MaxInFlight: o.MaxInFlight,
		OnTurn:      r.onTurn,
		Backoff:     r.backoff,
		Annotations: o.RequestAnnotations,
	})
	// Probes share the dataplanes' issuer: the cap on requests in flight
	// counts them both.
	r.prober = trust.NewProber(r.issuer, r.roots, o.Clock)
	return r
}

// onTurn wakes an owner whose turn has come, without blocking: if enough are
// awake already, the others' timers bring them back.
func (r *Reconciler) onTurn(owner issuance.Owner) {
	var ch chan event.GenericEvent
	var obj client.Object
	switch owner.Kind {
	case issuance.OwnerDataplane:
		ch, obj = r.dataplaneTurns, &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Namespace: owner.Scope, Name: owner.Name}}
	case issuance.OwnerProbe:
		ch, obj = r.meshTurns, &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: owner.Scope}}
	default:
		return
	}
	select {
	case ch <- event.GenericEvent{Object: obj}:
	default:
	}
}

const conflictCause = "SecretConflict"

// Reconcile brings one dataplane's Secret in line with its Mesh.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := req.NamespacedName
	owner := issuance.DataplaneOwner(key)
	var dp kuma.DataplaneResource
	if err := r.Client.Get(ctx, key, &dp); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.dataplaneGone(ctx, key)
		}
		return ctrl.Result{}, err
	}
	if dp.DeletionTimestamp != nil {
		return ctrl.Result{}, r.dataplaneGone(ctx, key)
	}

	p, prob, err := r.makePlan(ctx, &dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	if prob != nil {
		return r.reportProblem(ctx, &dp, prob)
	}
	if p == nil {
		// Not meshcert's to issue for (any more): stop issuing, and leave a
		// delivered Secret alone until it expires or its dataplane goes.
		return ctrl.Result{}, r.issuer.Cleanup(ctx, owner)
	}

	secret, err := r.deliveredSecret(ctx, &dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	r.learnFromSecret(p, secret)
	roots := r.meshRoots(p.mesh.Name, p.spec)
	p.bundle, p.bundleComplete = roots.Bundle(), roots.Complete()
	now := r.Clock.Now()
	v := checkDelivered(secret, p, now)
	if v.reissue == "" {
		r.backoff.Forget(owner)
		if v.staleBundle {
			if err := r.updateBundle(ctx, secret, p.bundle); err != nil {
				return ctrl.Result{}, err
			}
		}
		// Requests left behind by a crash between delivery and cleanup.
		if err := r.issuer.Cleanup(ctx, owner); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: v.renewAt.Sub(now)}, nil
	}
	if v.usable && v.reissue == reasonBackendChanged {
		// Peers trust both roots by now: the switch can take its time.
		from := secret.Annotations[kuma.BackendAnnotation]
		if r.switches.begin(p.mesh.Name, p.backend, now, r.Lookup.Inventory().CountOthers(p.mesh.Name, p.backend)) {
			r.Recorder.Eventf(p.mesh, nil, corev1.EventTypeNormal, "BackendSwitchStarted", "SwitchBackend",
				"reissuing the dataplanes' certificates from backend %q (was %q), spread over %s", p.backend, from, r.SwitchWindow)
		}
		if wait := r.switches.wait(p.mesh.Name, key, now); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	if _, conflict := r.conflicts.Load(key); conflict && secret == nil {
		// Check the name is free before asking a CA for a certificate that
		// could not be delivered.
		if wait := r.backoff.Wait(owner, conflictCause, now); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		var s corev1.Secret
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: dp.Namespace, Name: SecretName(dp.Name)}, &s)
		if err == nil && s.Labels[kuma.ManagedByLabel] != kuma.ManagedByValue {
			return ctrl.Result{RequeueAfter: r.backoff.Record(owner, conflictCause, now)}, nil
		}
		if client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, err
		}
		r.conflicts.Delete(key)
	}
	logf.FromContext(ctx).V(1).Info("Issuing a certificate", "reason", v.reissue)
	return r.issue(ctx, &dp, p, secret)
}

// issue asks for the dataplane's certificate, one step at a time, and
// delivers it as the dataplane's Secret.
func (r *Reconciler) issue(ctx context.Context, dp *kuma.DataplaneResource, p *plan, secret *corev1.Secret) (ctrl.Result, error) {
	req := issuance.Request{
		Owner:        issuance.DataplaneOwner(p.dataplane),
		NamePrefix:   p.dataplane.Namespace + "." + p.dataplane.Name,
		URIs:         p.uris,
		KeyAlgorithm: p.keyAlgorithm,
		IssuerRef:    p.issuerRef,
		Duration:     p.duration,
		Timeout:      p.timeout,
		Roots:        p.caCert,
		Replaces:     serialOf(secret),
		Revision:     p.issuerVersion,
		KeepIssued:   r.KeepRequests,
		Labels:       ownedLabels(p),
		Annotations:  ownedAnnotations(p),
	}
	out, err := r.issuer.Step(ctx, req, func(ctx context.Context, cert *issuance.Certificate) error {
		return r.deliver(ctx, dp, p, secret, cert)
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	if f := out.Failure; f != nil {
		r.reportFailure(ctx, dp, p, f, out.RetryAfter)
	}
	if cert := out.Certificate; cert != nil {
		leaf := cert.Leaf()
		issuedTotal.WithLabelValues(p.mesh.Name, p.backend).Inc()
		if secret != nil && secret.Annotations[kuma.BackendAnnotation] != p.backend {
			r.reportSwitchProgress(p)
		}
		logf.FromContext(ctx).Info("Delivered certificate", "backend", p.backend, "notAfter", leaf.NotAfter, "serial", leaf.SerialNumber.String())
		return ctrl.Result{RequeueAfter: issuance.RenewalTime(leaf, p.jitterSeed()).Sub(r.Clock.Now())}, nil
	}
	return ctrl.Result{RequeueAfter: out.RetryAfter}, nil
}

// deliver writes an issued certificate into the dataplane's Secret, with the
// mesh's trust bundle.
func (r *Reconciler) deliver(ctx context.Context, dp *kuma.DataplaneResource, p *plan, secret *corev1.Secret, cert *issuance.Certificate) error {
	if p.caCert == nil {
		r.roots.Learn(p.enabledKey, r.Clock.Now(), cert.Root)
	}
	// The mesh's roots, with the enabled backend's now known.
	bundle := r.meshRoots(p.mesh.Name, p.spec).Bundle()
	keyPEM, err := cert.KeyPEM()
	if err != nil {
		return err
	}
	data := map[string][]byte{
		corev1.TLSCertKey:       cert.ChainPEM,
		corev1.TLSPrivateKeyKey: keyPEM,
		kuma.CAKey:              bundle,
	}
	if err := r.writeSecret(ctx, dp, p, secret, data, cert.Leaf()); err != nil {
		if apierrors.IsAlreadyExists(err) {
			r.conflicts.Store(p.dataplane, true)
			return issuance.Failf(conflictCause, "Secret %s/%s exists and is not managed by meshcert; it is left alone", dp.Namespace, SecretName(dp.Name))
		}
		return err
	}
	return nil
}

// reportFailure tells why an attempt failed: on the Dataplane, and on the
// Mesh when the backend is at fault, as it is for all but a Secret conflict.
func (r *Reconciler) reportFailure(ctx context.Context, dp *kuma.DataplaneResource, p *plan, f *issuance.Failure, retryIn time.Duration) {
	msg := f.Message
	switch f.Reason {
	case issuance.ReasonMissingCA:
		msg = fmt.Sprintf("backend %q: %s; without a caCert there is no trust bundle to deliver: set conf.caCert to the issuer's CA certificate", p.backend, msg)
	case issuance.ReasonUntrustedCertificate:
		msg = fmt.Sprintf("backend %q: %s", p.backend, msg)
	}
	failuresTotal.WithLabelValues(f.Reason).Inc()
	r.Recorder.Eventf(dp, nil, corev1.EventTypeWarning, f.Reason, "IssueCertificate", "%s; retrying in %s", msg, retryIn)
	if f.Reason != conflictCause {
		r.Recorder.Eventf(p.mesh, dp, corev1.EventTypeWarning, f.Reason, "IssueCertificate", "%s", msg)
	}
	logf.FromContext(ctx).Info("Issuance failed", "reason", f.Reason, "message", msg, "retryIn", retryIn)
}

// reportProblem reports why no plan could be made, once per distinct
// problem, so resyncs add no Events. A backend problem is retried with
// backoff; a dataplane's own problem waits for the dataplane to change.
func (r *Reconciler) reportProblem(ctx context.Context, dp *kuma.DataplaneResource, prob *problem) (ctrl.Result, error) {
	key := types.NamespacedName{Namespace: dp.Namespace, Name: dp.Name}
	owner := issuance.DataplaneOwner(key)
	if err := r.issuer.Cleanup(ctx, owner); err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	if r.backoff.Known(owner, prob.Error()) {
		if !prob.retry {
			return ctrl.Result{}, nil // Reported already; a change to the dataplane will bring us back.
		}
		if wait := r.backoff.Wait(owner, prob.Error(), now); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	failuresTotal.WithLabelValues(prob.reason).Inc()
	delay := r.backoff.Record(owner, prob.Error(), now)
	note := prob.message
	if prob.retry {
		note += fmt.Sprintf("; retrying in %s", delay)
	}
	r.Recorder.Eventf(dp, nil, corev1.EventTypeWarning, prob.reason, "IssueCertificate", "%s", note)
	if prob.onMesh {
		var mesh kuma.MeshResource
		if err := r.Client.Get(ctx, types.NamespacedName{Name: dp.MeshName()}, &mesh); err == nil {
			r.Recorder.Eventf(&mesh, dp, corev1.EventTypeWarning, prob.reason, "IssueCertificate", "%s", prob.message)
		}
	}
	logf.FromContext(ctx).Info("Cannot issue", "reason", prob.reason, "message", prob.message)
	if !prob.retry {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: delay}, nil
}

// dataplaneGone removes what meshcert made for a dataplane that no longer
// exists. The owner reference would let the garbage collector do it, but a
// cluster may run none, and it can lag.
func (r *Reconciler) dataplaneGone(ctx context.Context, key types.NamespacedName) error {
	owner := issuance.DataplaneOwner(key)
	r.backoff.Forget(owner)
	r.conflicts.Delete(key)
	if err := r.issuer.Cleanup(ctx, owner); err != nil {
		return err
	}
	var s corev1.Secret
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: SecretName(key.Name)}, &s)
	if apierrors.IsNotFound(err) || (err == nil && s.Annotations[kuma.DataplaneNameAnnotation] != key.Name) {
		return nil
	}
	if err != nil {
		return err
	}
	logf.FromContext(ctx).Info("Deleting the Secret of a deleted dataplane", "secret", s.Name)
	return client.IgnoreNotFound(r.Client.Delete(ctx, &s, client.Preconditions{UID: &s.UID}))
}
