// Package reconciler issues, delivers and rotates the certificate of every
// dataplane in a mesh whose enabled mTLS backend is certmanager, through
// cert-manager CertificateRequests. The private keys are made here and never
// leave meshcert but in the dataplane's own Secret.
package reconciler

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
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

	"github.com/meshcert/meshcert/lookup"
	"github.com/meshcert/meshcert/model"
)

// Reconciler keeps one dataplane's certificate at a time; controller-runtime
// never runs two reconciles of the same dataplane at once.
type Reconciler struct {
	// Client reads from the informer cache and writes to the API server.
	Client client.Client
	// APIReader reads from the API server: only to see whether a Secret
	// that meshcert does not manage still holds a dataplane's Secret name.
	APIReader client.Reader
	// Lookup answers for mesh Secrets and issuers.
	Lookup          *lookup.Index
	Recorder        events.EventRecorder
	Clock           clock.PassiveClock
	SystemNamespace string
	KeyAlgorithm    KeyAlgorithm
	// RequestTimeout bounds the wait for a CertificateRequest, unless the
	// backend's dpCert.requestTimeout says otherwise.
	RequestTimeout time.Duration
	// KeepRequests keeps issued CertificateRequests for auditing.
	KeepRequests bool
	Backoff      Backoff
	// SwitchWindow spreads the reissues of a switch of enabled backend.
	SwitchWindow time.Duration
	// MaxInFlight caps the CertificateRequests open at once; 0 is no cap.
	// A large mesh then finishes requests before it starts more, rather than
	// holding thousands of keys and requests while the signer catches up.
	MaxInFlight int

	once     sync.Once
	pending  *pendingRequests
	failures *failures
	trust    *trustStore
	switches *switches
	// conflicts are the dataplanes whose Secret name is held by a Secret
	// meshcert does not manage.
	conflicts sync.Map
}

func (r *Reconciler) init() {
	r.once.Do(func() {
		r.pending = newPendingRequests(r.MaxInFlight)
		r.failures = newFailures(r.Backoff)
		r.trust = newTrustStore()
		r.switches = newSwitches(r.SwitchWindow)
	})
}

const conflictCause = "SecretConflict"

// Reconcile brings one dataplane's Secret in line with its Mesh.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.init()
	key := req.NamespacedName
	var dp model.DataplaneResource
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
		return ctrl.Result{}, r.cleanupRequests(ctx, key, "")
	}

	secret, err := r.deliveredSecret(ctx, &dp)
	if err != nil {
		return ctrl.Result{}, err
	}
	r.learnFromSecret(p, secret)
	trust := r.trustOf(p.mesh.Name, p.spec)
	p.bundle, p.bundleComplete = trust.bundle(), len(trust.unknown) == 0
	now := r.Clock.Now()
	v := checkDelivered(secret, p, now)
	if v.reissue == "" {
		r.failures.forget(key)
		certInventory.set(key, certInfo{mesh: p.mesh.Name, backend: p.backend, notAfter: v.leaf.NotAfter})
		if v.staleBundle {
			if err := r.updateBundle(ctx, secret, p.bundle); err != nil {
				return ctrl.Result{}, err
			}
		}
		// Requests left behind by a crash between delivery and cleanup.
		if err := r.cleanupRequests(ctx, key, ""); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: v.renewAt.Sub(now)}, nil
	}
	if v.usable && v.reissue == reasonBackendChanged {
		// Peers trust both roots by now: the switch can take its time.
		from := secret.Annotations[model.BackendAnnotation]
		if r.switches.begin(p.mesh.Name, p.backend, now, certInventory.countOthers(p.mesh.Name, p.backend)) {
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
		if wait := r.failures.wait(key, conflictCause, now); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		var s corev1.Secret
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: dp.Namespace, Name: SecretName(dp.Name)}, &s)
		if err == nil && s.Labels[model.ManagedByLabel] != model.ManagedByValue {
			return ctrl.Result{RequeueAfter: r.failures.record(key, conflictCause, now)}, nil
		}
		if client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, err
		}
		r.conflicts.Delete(key)
	}
	if wait := r.failures.wait(key, p.cause(), now); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	logf.FromContext(ctx).V(1).Info("Issuing a certificate", "reason", v.reissue)
	return r.issue(ctx, &dp, p, secret)
}

// cause identifies what an attempt was made with, for the backoff.
func (p *plan) cause() string {
	return p.identityHash + "/" + p.issuerHash + "/" + p.issuerVersion
}

// issue drives the dataplane's CertificateRequest one step: create it, or act
// on its outcome. Each step is triggered by the request's watch, with a
// timer only for the deadline.
func (r *Reconciler) issue(ctx context.Context, dp *model.DataplaneResource, p *plan, secret *corev1.Secret) (ctrl.Result, error) {
	key := p.dataplane
	name := requestName(key, p.identityHash, p.issuerHash, serialOf(secret))
	if err := r.cleanupRequests(ctx, key, name); err != nil {
		return ctrl.Result{}, err
	}
	pr := r.pending.get(key)
	if pr == nil {
		if !r.pending.admit(key) {
			// At the cap: woken when a request in flight ends, or else by the
			// timer, in case the wake-up went to a dataplane that needed none.
			return ctrl.Result{RequeueAfter: admitRetry}, nil
		}
		return r.createRequest(ctx, dp, p, name)
	}

	now := r.Clock.Now()
	deadline := pr.created.Add(p.timeout)
	var cr cmapi.CertificateRequest
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.SystemNamespace, Name: name}, &cr)
	switch {
	case apierrors.IsNotFound(err):
		// Not in the cache yet; its creation wakes us up.
	case err != nil:
		return ctrl.Result{}, err
	case !requestUsesKey(&cr, pr.key):
		// The cache still holds the request this name had before.
	default:
		if result, done, err := r.onOutcome(ctx, dp, p, secret, &cr, pr); done {
			return result, err
		}
	}
	if !now.Before(deadline) {
		return r.fail(ctx, dp, p, "Timeout", true, "CertificateRequest %s/%s was not signed within %s", r.SystemNamespace, name, p.timeout)
	}
	return ctrl.Result{RequeueAfter: deadline.Sub(now)}, nil
}

// onOutcome acts on a finished request. done is false while it is pending.
func (r *Reconciler) onOutcome(ctx context.Context, dp *model.DataplaneResource, p *plan, secret *corev1.Secret, cr *cmapi.CertificateRequest, pr *pendingRequest) (ctrl.Result, bool, error) {
	ready := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionReady)
	var res ctrl.Result
	var err error
	switch {
	case apiutil.CertificateRequestIsDenied(cr):
		c := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionDenied)
		res, err = r.fail(ctx, dp, p, "Denied", true, "CertificateRequest %s/%s was denied: %s", cr.Namespace, cr.Name, c.Message)
	case apiutil.CertificateRequestHasInvalidRequest(cr):
		res, err = r.fail(ctx, dp, p, "InvalidRequest", true, "CertificateRequest %s/%s is invalid: %s", cr.Namespace, cr.Name, apiutil.CertificateRequestInvalidRequestMessage(cr))
	case ready != nil && ready.Status == cmmeta.ConditionFalse && ready.Reason == cmapi.CertificateRequestReasonFailed:
		res, err = r.fail(ctx, dp, p, "Failed", true, "CertificateRequest %s/%s failed: %s", cr.Namespace, cr.Name, ready.Message)
	case ready != nil && ready.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
		res, err = r.deliver(ctx, dp, p, secret, cr, pr)
	default:
		return ctrl.Result{}, false, nil
	}
	return res, true, err
}

// createRequest makes a key and asks cert-manager to sign it.
func (r *Reconciler) createRequest(ctx context.Context, dp *model.DataplaneResource, p *plan, name string) (ctrl.Result, error) {
	// A request of this name that meshcert holds no key for was made by a
	// process that died: its key went with it, so it can never be used.
	var stale cmapi.CertificateRequest
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.SystemNamespace, Name: name}, &stale)
	if err == nil {
		if err := r.deleteRequest(ctx, &stale); err != nil {
			return ctrl.Result{}, err
		}
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}

	priv, err := generateKey(r.KeyAlgorithm)
	if err != nil {
		return ctrl.Result{}, err
	}
	csr, err := certificateRequestPEM(priv, p.uris)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("encoding the CSR: %w", err)
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   r.SystemNamespace,
			Labels:      ownedLabels(p),
			Annotations: ownedAnnotations(p),
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			IssuerRef: p.issuerRef,
			Duration:  &metav1.Duration{Duration: p.duration},
			Usages:    usages,
		},
	}
	if err := r.Client.Create(ctx, cr); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// The cache had not seen the old request yet; it is deleted on the next pass.
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		return ctrl.Result{}, fmt.Errorf("creating CertificateRequest %s/%s: %w", r.SystemNamespace, name, err)
	}
	r.pending.set(p.dataplane, &pendingRequest{name: name, key: priv, created: r.Clock.Now()})
	logf.FromContext(ctx).V(1).Info("Created CertificateRequest", "request", name, "issuer", p.issuerRef.Name)
	return ctrl.Result{RequeueAfter: p.timeout}, nil
}

// deliver checks an issued certificate against the plan and the key, and
// writes the dataplane's Secret.
func (r *Reconciler) deliver(ctx context.Context, dp *model.DataplaneResource, p *plan, secret *corev1.Secret, cr *cmapi.CertificateRequest, pr *pendingRequest) (ctrl.Result, error) {
	chain, err := pki.DecodeX509CertificateChainBytes(cr.Status.Certificate)
	if err != nil {
		return r.fail(ctx, dp, p, "InvalidCertificate", true, "CertificateRequest %s/%s holds no valid certificate chain: %v", cr.Namespace, cr.Name, err)
	}
	leaf := chain[0]
	if ok, err := pki.PublicKeyMatchesCertificate(pr.key.Public(), leaf); err != nil || !ok {
		return r.fail(ctx, dp, p, "CertificateMismatch", true, "the certificate of CertificateRequest %s/%s is not for the requested key", cr.Namespace, cr.Name)
	}
	if !sameURIs(leaf.URIs, p.uris) {
		return r.fail(ctx, dp, p, "CertificateMismatch", true, "the certificate of CertificateRequest %s/%s has URI SANs %v, not the requested %v", cr.Namespace, cr.Name, leaf.URIs, p.uris)
	}
	trust := p.trust
	if trust == nil {
		trust = cr.Status.CA
	}
	if len(trust) == 0 {
		return r.fail(ctx, dp, p, "MissingCA", true, "backend %q: the issuer set no status.ca on CertificateRequest %s/%s and the backend has no caCert, so there is no trust bundle to deliver; set conf.caCert to the issuer's CA certificate", p.backend, cr.Namespace, cr.Name)
	}
	now := r.Clock.Now()
	root, err := verifiedRoot(chain, trust, now)
	if err != nil {
		return r.fail(ctx, dp, p, "UntrustedCertificate", true, "backend %q: the certificate of CertificateRequest %s/%s does not verify against the backend's CA: %v", p.backend, cr.Namespace, cr.Name, err)
	}
	if p.trust == nil {
		r.trust.learn(p.enabledKey, []*x509.Certificate{root})
	}
	// The mesh's roots, with the enabled backend's now known.
	bundle := r.trustOf(p.mesh.Name, p.spec).bundle()
	keyPEM, err := pki.EncodePrivateKey(pr.key, cmapi.PKCS8)
	if err != nil {
		return ctrl.Result{}, err
	}
	data := map[string][]byte{
		corev1.TLSCertKey:       cr.Status.Certificate,
		corev1.TLSPrivateKeyKey: keyPEM,
		model.CAKey:             bundle,
	}
	if err := r.writeSecret(ctx, dp, p, secret, data, leaf); err != nil {
		if apierrors.IsAlreadyExists(err) {
			r.conflicts.Store(p.dataplane, true)
			return r.fail(ctx, dp, p, conflictCause, false, "Secret %s/%s exists and is not managed by meshcert; it is left alone", dp.Namespace, SecretName(dp.Name))
		}
		return ctrl.Result{}, err
	}
	if !r.KeepRequests {
		if err := r.deleteRequest(ctx, cr); err != nil {
			return ctrl.Result{}, err
		}
	}
	r.pending.delete(p.dataplane)
	r.failures.forget(p.dataplane)
	issuedTotal.WithLabelValues(p.mesh.Name, p.backend).Inc()
	issuanceSeconds.Observe(now.Sub(pr.created).Seconds())
	certInventory.set(p.dataplane, certInfo{mesh: p.mesh.Name, backend: p.backend, notAfter: leaf.NotAfter})
	if secret != nil && secret.Annotations[model.BackendAnnotation] != p.backend {
		r.reportSwitchProgress(p)
	}
	logf.FromContext(ctx).Info("Delivered certificate", "backend", p.backend, "notAfter", leaf.NotAfter, "serial", leaf.SerialNumber.String())
	return ctrl.Result{RequeueAfter: renewalTime(leaf, p.jitterSeed()).Sub(now)}, nil
}

// fail ends an attempt: it reports why, deletes the request, and backs off.
func (r *Reconciler) fail(ctx context.Context, dp *model.DataplaneResource, p *plan, reason string, backendProblem bool, format string, args ...any) (ctrl.Result, error) {
	msg := fmt.Sprintf(format, args...)
	failuresTotal.WithLabelValues(reason).Inc()
	if err := r.cleanupRequests(ctx, p.dataplane, ""); err != nil {
		return ctrl.Result{}, err
	}
	delay := r.failures.record(p.dataplane, p.cause(), r.Clock.Now())
	r.Recorder.Eventf(dp, nil, corev1.EventTypeWarning, reason, "IssueCertificate", "%s; retrying in %s", msg, delay)
	if backendProblem {
		r.Recorder.Eventf(p.mesh, dp, corev1.EventTypeWarning, reason, "IssueCertificate", "%s", msg)
	}
	logf.FromContext(ctx).Info("Issuance failed", "reason", reason, "message", msg, "retryIn", delay)
	return ctrl.Result{RequeueAfter: delay}, nil
}

// reportProblem reports why no plan could be made, once per distinct
// problem, so resyncs add no Events. A backend problem is retried with
// backoff; a dataplane's own problem waits for the dataplane to change.
func (r *Reconciler) reportProblem(ctx context.Context, dp *model.DataplaneResource, prob *problem) (ctrl.Result, error) {
	key := types.NamespacedName{Namespace: dp.Namespace, Name: dp.Name}
	if err := r.cleanupRequests(ctx, key, ""); err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	if r.failures.known(key, prob.Error()) {
		if !prob.retry {
			return ctrl.Result{}, nil // Reported already; a change to the dataplane will bring us back.
		}
		if wait := r.failures.wait(key, prob.Error(), now); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	failuresTotal.WithLabelValues(prob.reason).Inc()
	delay := r.failures.record(key, prob.Error(), now)
	note := prob.message
	if prob.retry {
		note += fmt.Sprintf("; retrying in %s", delay)
	}
	r.Recorder.Eventf(dp, nil, corev1.EventTypeWarning, prob.reason, "IssueCertificate", "%s", note)
	if prob.onMesh {
		var mesh model.MeshResource
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
	r.failures.forget(key)
	r.conflicts.Delete(key)
	certInventory.delete(key)
	if err := r.cleanupRequests(ctx, key, ""); err != nil {
		return err
	}
	var s corev1.Secret
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: SecretName(key.Name)}, &s)
	if apierrors.IsNotFound(err) || (err == nil && s.Annotations[model.DataplaneNameAnnotation] != key.Name) {
		return nil
	}
	if err != nil {
		return err
	}
	logf.FromContext(ctx).Info("Deleting the Secret of a deleted dataplane", "secret", s.Name)
	return client.IgnoreNotFound(r.Client.Delete(ctx, &s, client.Preconditions{UID: &s.UID}))
}

// cleanupRequests deletes the dataplane's CertificateRequests except keep,
// and forgets a pending request that is not keep. Issued requests stay when
// they are kept for auditing.
func (r *Reconciler) cleanupRequests(ctx context.Context, key types.NamespacedName, keep string) error {
	if pr := r.pending.get(key); pr != nil && pr.name != keep {
		r.pending.delete(key)
	}
	var list cmapi.CertificateRequestList
	if err := r.Client.List(ctx, &list, client.InNamespace(r.SystemNamespace), client.MatchingFields{dataplaneIndex: key.String()}); err != nil {
		return err
	}
	for i := range list.Items {
		cr := &list.Items[i]
		if cr.Name == keep {
			continue
		}
		if r.KeepRequests && apiutil.CertificateRequestHasCondition(cr, cmapi.CertificateRequestCondition{Type: cmapi.CertificateRequestConditionReady, Status: cmmeta.ConditionTrue}) {
			continue
		}
		if err := r.deleteRequest(ctx, cr); err != nil {
			return err
		}
	}
	return nil
}

func (r *Reconciler) deleteRequest(ctx context.Context, cr *cmapi.CertificateRequest) error {
	err := r.Client.Delete(ctx, cr, client.Preconditions{UID: &cr.UID})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // Already gone, or replaced by a newer request of that name.
	}
	return err
}

// requestUsesKey tells whether a request was made for this key.
func requestUsesKey(cr *cmapi.CertificateRequest, key crypto.Signer) bool {
	csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
	if err != nil {
		return false
	}
	ok, err := pki.PublicKeyMatchesCSR(key.Public(), csr)
	return err == nil && ok
}

// serialOf is the serial of a Secret's certificate, or "".
func serialOf(s *corev1.Secret) string {
	if s == nil {
		return ""
	}
	chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
	if err != nil {
		return ""
	}
	return chain[0].SerialNumber.String()
}

// pendingRequests holds the key of each request in flight. It lives only in
// memory: a key never touches the API server before its certificate exists.
// With a cap, the dataplanes turned away wait in line, and each request that
// ends wakes the first of them.
type pendingRequests struct {
	mu      sync.Mutex
	byKey   map[types.NamespacedName]*pendingRequest
	max     int
	waiting []types.NamespacedName
	queued  map[types.NamespacedName]bool
	// wake receives the dataplanes whose turn has come.
	wake chan event.GenericEvent
}

// admitRetry is how often a dataplane turned away at the cap tries again.
const admitRetry = 30 * time.Second

type pendingRequest struct {
	name    string
	key     crypto.Signer
	created time.Time
}

func newPendingRequests(maxInFlight int) *pendingRequests {
	return &pendingRequests{
		byKey:  map[types.NamespacedName]*pendingRequest{},
		max:    maxInFlight,
		queued: map[types.NamespacedName]bool{},
		wake:   make(chan event.GenericEvent, 1024),
	}
}

func (p *pendingRequests) get(key types.NamespacedName) *pendingRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byKey[key]
}

// admit tells whether a new request may start, or puts key in line. The cap
// is soft: workers admitted at the same moment may pass it by a few.
func (p *pendingRequests) admit(key types.NamespacedName) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.max <= 0 || len(p.byKey) < p.max {
		return true
	}
	if !p.queued[key] {
		p.queued[key] = true
		p.waiting = append(p.waiting, key)
	}
	return false
}

func (p *pendingRequests) set(key types.NamespacedName, pr *pendingRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.byKey[key]; !ok {
		inFlight.Inc()
	}
	p.byKey[key] = pr
}

// delete ends key's request, and wakes as many waiting dataplanes as there
// are free places.
func (p *pendingRequests) delete(key types.NamespacedName) {
	p.mu.Lock()
	if _, ok := p.byKey[key]; !ok {
		p.mu.Unlock()
		return
	}
	inFlight.Dec()
	delete(p.byKey, key)
	var next []types.NamespacedName
	for len(p.waiting) > 0 && len(next) < p.max-len(p.byKey) {
		next = append(next, p.waiting[0])
		delete(p.queued, p.waiting[0])
		p.waiting = p.waiting[1:]
	}
	p.mu.Unlock()
	for _, k := range next {
		select {
		case p.wake <- event.GenericEvent{Object: &model.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}}:
		default: // Enough are awake already; the others' timers bring them back.
		}
	}
}

// reportSwitchProgress reports a switch of enabled backend on the Mesh: each
// tenth of the way, then its end.
func (r *Reconciler) reportSwitchProgress(p *plan) {
	done, total, report, complete := r.switches.progress(p.mesh.Name, p.backend)
	switch {
	case complete:
		r.Recorder.Eventf(p.mesh, nil, corev1.EventTypeNormal, "BackendSwitchComplete", "SwitchBackend",
			"all %d dataplanes hold certificates from backend %q; backends that no longer issue can be removed", total, p.backend)
	case report:
		r.Recorder.Eventf(p.mesh, nil, corev1.EventTypeNormal, "BackendSwitchProgress", "SwitchBackend",
			"%d of %d dataplanes reissued from backend %q", done, total, p.backend)
	}
}

// updateBundle rewrites only a Secret's ca.crt: a backend was added or
// removed, and the certificate and key stay as they are.
func (r *Reconciler) updateBundle(ctx context.Context, s *corev1.Secret, bundle []byte) error {
	updated := s.DeepCopy()
	updated.Data[model.CAKey] = bundle
	logf.FromContext(ctx).V(1).Info("Updating the trust bundle", "secret", s.Name)
	return r.Client.Update(ctx, updated)
}
