// Package meshidentity keeps, for each MeshIdentity that meshcert serves or
// guards, a MeshTrust in the system namespace whose trust domain is the
// identity's and whose CA bundle holds its issuer's roots: from the caCert
// when there is one, else learned by package trust's prober. Through a CA rotation the new root is trusted first, and an old
// one leaves only once no certificate it signed can still be valid.
package meshidentity

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/trust"
)

// Annotations on the MeshTrusts meshcert keeps.
const (
	// RetiringAnnotation lists the roots that left the issuer and are still
	// trusted, each as its SHA-256 fingerprint and when it left.
	RetiringAnnotation = "meshcert.io/retiring-roots"
)

// rootRefresh is how often a root learned from status.ca is learned again,
// to notice an issuer whose CA changed in place.
const rootRefresh = 10 * time.Minute

// Options configure a Reconciler.
type Options struct {
	Client          client.Client
	Lookup          *lookup.Index
	Recorder        events.EventRecorder
	Clock           clock.PassiveClock
	SystemNamespace string
	// Zone is the .Zone of a trust domain without a kuma.io/zone label.
	Zone string
	// KeyAlgorithm is the probes' key, unless the identity's
	// meshcert.io/key-algorithm annotation names another.
	KeyAlgorithm   issuance.KeyAlgorithm
	RequestTimeout time.Duration
	Backoff        issuance.BackoffPolicy
	// RequestAnnotations are added to every CertificateRequest.
	RequestAnnotations map[string]string
}

// Reconciler keeps one MeshIdentity's MeshTrust at a time: its controller
// runs one worker, which alone touches reported.
type Reconciler struct {
	Options
	prober *trust.Prober
	roots  *trust.Store
	// reported is the last condition reported on each identity, so that
	// resyncs add no Events.
	reported map[issuance.Owner]string
}

// New returns a Reconciler, with the prober of its issuers' roots.
func New(o Options) *Reconciler {
	roots := trust.NewStore()
	issuer := issuance.New(issuance.Options{
		Client: o.Client, Namespace: o.SystemNamespace, Clock: o.Clock, Backoff: issuance.NewBackoff(o.Backoff),
		Annotations: o.RequestAnnotations,
	})
	return &Reconciler{
		Options:  o,
		prober:   trust.NewProber(issuer, roots, o.Clock),
		roots:    roots,
		reported: map[issuance.Owner]string{},
	}
}

// Reconcile brings one MeshIdentity's MeshTrust in line with its issuer.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	owner := issuance.MeshIdentityOwner(req.NamespacedName)
	var mid kuma.MeshIdentityResource
	if err := r.Client.Get(ctx, req.NamespacedName, &mid); err != nil {
		if apierrors.IsNotFound(err) {
			delete(r.reported, owner)
			return ctrl.Result{}, r.forget(ctx, req.NamespacedName, owner)
		}
		return ctrl.Result{}, err
	}
	log := logf.FromContext(ctx)
	served := mid.ServedBy()
	conf, errs := mid.CertManagerConf()
	switch {
	case served == kuma.NotServed || mid.DeletionTimestamp != nil || mid.Namespace != r.SystemNamespace:
		return ctrl.Result{}, r.forget(ctx, req.NamespacedName, owner)
	case mid.Annotations[kuma.MeshTrustAnnotation] == "Disabled":
		return ctrl.Result{}, r.forget(ctx, req.NamespacedName, owner)
	case len(errs) > 0:
		r.report(&mid, corev1.EventTypeWarning, "InvalidMeshIdentity", "%s", errs.ToAggregate().Error())
		return ctrl.Result{}, nil
	case served == kuma.ServedByExtension && conf.CACert != nil:
		// Kong Mesh makes the MeshTrust of a certmanager identity with a caCert.
		if err := r.forget(ctx, req.NamespacedName, owner); err != nil {
			return ctrl.Result{}, err
		}
		r.report(&mid, corev1.EventTypeNormal, "MeshTrustLeftToKongMesh",
			"the identity has a caCert, so Kong Mesh makes its MeshTrust; meshcert does not make a second one")
		return ctrl.Result{}, nil
	}

	mesh := mid.MeshName()
	r.reportIssuer(&mid, mesh, conf)
	td, err := kuma.RenderTrustDomain(mid.Spec.SpiffeID.TrustDomainTemplate(), mesh, r.Zone, kuma.LabelView(&mid))
	if err != nil {
		r.report(&mid, corev1.EventTypeWarning, "InvalidTrustDomain", "cannot render the trust domain: %v", err)
		return ctrl.Result{}, nil
	}
	roots, wait, err := r.issuerRoots(ctx, &mid, mesh, td, conf, owner)
	if err != nil || roots == nil {
		return ctrl.Result{RequeueAfter: wait}, err
	}
	reportRoots(mesh, mid.Name, roots)
	next, kept, err := r.apply(ctx, &mid, mesh, td, roots)
	if err != nil {
		return ctrl.Result{}, err
	}
	if kept {
		delete(r.reported, owner) // Whatever was wrong is over.
		log.V(1).Info("MeshTrust in line", "trustDomain", td, "roots", len(roots))
	}
	return ctrl.Result{RequeueAfter: issuance.Soonest(next, wait)}, nil
}

// reportIssuer records whether the identity's issuer is Ready, when it is
// an Issuer or ClusterIssuer of cert-manager's own, which meshcert watches.
// A failed lookup leaves the last word standing.
func (r *Reconciler) reportIssuer(mid *kuma.MeshIdentityResource, mesh string, conf kuma.CertManagerConf) {
	ref := defaults.IssuerRef(conf.IssuerRef)
	if ref.Group != defaults.IssuerGroup || (ref.Kind != cmapi.IssuerKind && ref.Kind != cmapi.ClusterIssuerKind) {
		forgetIssuer(mid.Name)
		return
	}
	_, problem := lookup.IssuerProblem(ref, lookup.Env{SystemNamespace: r.SystemNamespace, Now: r.Clock.Now(), Lookup: r.Lookup})
	if problem != nil && problem.Type == lookup.LookupFailed {
		return
	}
	setIssuerReady(mesh, mid.Name, ref.Kind, ref.Name, problem == nil)
}

// issuerRoots are the roots the identity's certificates chain to: its caCert,
// or else the root of a probe certificate, learned once and again every
// rootRefresh. The probe asks for an identity in the trust domain td, so an
// approval policy on the identity's trust domain covers it. nil roots mean not
// known yet; wait says when to look again.
func (r *Reconciler) issuerRoots(ctx context.Context, mid *kuma.MeshIdentityResource, mesh, td string, conf kuma.CertManagerConf, owner issuance.Owner) ([]*x509.Certificate, time.Duration, error) {
	env := lookup.Env{SystemNamespace: r.SystemNamespace, Now: r.Clock.Now(), Lookup: r.Lookup}
	if ds := conf.CACert; ds != nil {
		ca := lookup.ResolveCACert(mesh, *ds, env)
		if !ca.OK() {
			msg := strings.Join(ca.Problems, "; ")
			if ca.Unresolved != nil {
				msg = ca.Unresolved.Message
			}
			r.report(mid, corev1.EventTypeWarning, "InvalidCACert", "the CA certificate cannot be used: %s", msg)
			return nil, 0, nil
		}
		return ca.Roots(), 0, nil
	}
	ref := defaults.IssuerRef(conf.IssuerRef)
	state, _ := lookup.IssuerProblem(ref, env)
	version := ""
	if state != nil {
		version = state.ResourceVersion
	}
	// The store is per mesh; here each identity is a "mesh" of its own.
	key := trust.BackendKey{Mesh: owner.String(), Backend: mesh, Config: kuma.Hash(ref.Group, ref.Kind, ref.Name, version)}
	r.roots.Prune(owner.String(), map[trust.BackendKey]bool{key: true})
	now := r.Clock.Now()
	known, learnedAt, ok := r.roots.Roots(key)
	if ok && now.Sub(learnedAt) < rootRefresh {
		return known, learnedAt.Add(rootRefresh).Sub(now), nil
	}
	if retryAt, failed := r.roots.RetryAt(key); failed && now.Before(retryAt) {
		return known, retryAt.Sub(now), nil
	}
	out, err := r.prober.Step(ctx, trust.Probe{
		Key:          key,
		Owner:        owner,
		NamePrefix:   "probe.identity." + mid.Name,
		TrustDomain:  td,
		KeyAlgorithm: issuance.KeyAlgorithmFor(mid.Annotations, r.KeyAlgorithm),
		IssuerRef:    ref,
		Timeout:      r.RequestTimeout,
		Revision:     version,
		Labels:       map[string]string{kuma.ManagedMeshLabel: kuma.LabelValue(mesh)},
		Annotations:  map[string]string{kuma.MeshIdentityAnnotation: mid.Name},
	})
	switch {
	case err != nil:
		return nil, 0, err
	case out.Root != nil:
		if out.News {
			logf.FromContext(ctx).Info("Learned an identity's root", "root", out.Root.Subject.String())
		}
		return []*x509.Certificate{out.Root}, rootRefresh, nil
	case out.Failure != nil:
		r.report(mid, corev1.EventTypeWarning, "RootUnknown",
			"cannot learn the issuer's root (%s); set meshcert.io/ca-cert-secret, or a caCert, to its CA certificate", out.Failure.Message)
	}
	// The probe failed or is under way; keep what is known until it ends.
	return known, out.RetryAfter, nil
}

// apply writes the identity's MeshTrust, and returns when an old root is due
// to leave it; kept says the MeshTrust is meshcert's and in line.
func (r *Reconciler) apply(ctx context.Context, mid *kuma.MeshIdentityResource, mesh, td string, roots []*x509.Certificate) (due time.Duration, kept bool, err error) {
	now := r.Clock.Now()
	key := types.NamespacedName{Namespace: r.SystemNamespace, Name: mid.Name}
	var existing kuma.MeshTrustResource
	err = r.Client.Get(ctx, key, &existing)
	found := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, false, err
	}
	if found && existing.Labels[kuma.ManagedByLabel] != kuma.ManagedByValue {
		r.report(mid, corev1.EventTypeWarning, "MeshTrustConflict",
			"MeshTrust %s exists and is not managed by meshcert; it is left alone", key)
		return 0, false, nil
	}
	if !found {
		if other := r.foreignMeshTrust(ctx, mesh, td); other != "" {
			r.report(mid, corev1.EventTypeNormal, "MeshTrustExists",
				"MeshTrust %s already trusts trust domain %q in mesh %q; meshcert does not make a second one", other, td, mesh)
			return 0, false, nil
		}
	}

	// The roots now, and those that left but may still have valid certificates.
	lifetime := mid.Lifetime()
	retiring := parseRetiring(existing.Annotations[RetiringAnnotation])
	current := map[string]bool{}
	for _, c := range roots {
		current[fingerprint(c)] = true
	}
	keep := slices.Clone(roots)
	var added, retired []string
	for _, old := range existing.Roots() {
		fp := fingerprint(old)
		if current[fp] {
			delete(retiring, fp)
			continue
		}
		left, ok := retiring[fp]
		if !ok {
			// Recorded to the second, so rounded up: never retired early.
			left = now.Truncate(time.Second).Add(time.Second)
			retiring[fp] = left
		}
		if until := left.Add(lifetime); now.Before(until) {
			keep = append(keep, old)
			if due == 0 || until.Sub(now) < due {
				due = until.Sub(now)
			}
		} else {
			delete(retiring, fp)
			retired = append(retired, old.Subject.String())
		}
	}
	for fp := range retiring {
		if !slices.ContainsFunc(keep, func(c *x509.Certificate) bool { return fingerprint(c) == fp }) {
			delete(retiring, fp)
		}
	}
	if found {
		for _, c := range roots {
			if !slices.ContainsFunc(existing.Roots(), c.Equal) {
				added = append(added, c.Subject.String())
			}
		}
	}

	desired := &kuma.MeshTrustResource{
		ObjectMeta: metav1.ObjectMeta{
			Name:      key.Name,
			Namespace: key.Namespace,
			Labels: map[string]string{
				kuma.MeshLabel:      mesh,
				kuma.ManagedByLabel: kuma.ManagedByValue,
				kuma.OriginLabel:    kuma.OriginZone,
			},
			Annotations: map[string]string{kuma.MeshIdentityAnnotation: mid.Name},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: kuma.GroupVersion.String(), Kind: "MeshIdentity", Name: mid.Name, UID: mid.UID, Controller: ptr.To(true),
			}},
		},
		Spec:   kuma.MeshTrustSpec{TrustDomain: td, CABundles: []kuma.CABundle{{Type: "Pem", PEM: &kuma.PEM{Value: string(trust.EncodeRoots(keep))}}}},
		Status: &kuma.MeshTrustStatus{Origin: &kuma.Origin{KRI: ptr.To(fmt.Sprintf("kri_mid_%s_%s_%s_%s_", mesh, r.Zone, mid.Namespace, mid.Name))}},
	}
	if len(retiring) > 0 {
		desired.Annotations[RetiringAnnotation] = formatRetiring(retiring)
	}
	if !found {
		desired.SetGroupVersionKind(kuma.GroupVersion.WithKind("MeshTrust"))
		if err := r.Client.Create(ctx, desired); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return time.Second, false, nil // The cache has not seen it yet.
			}
			return 0, false, err
		}
		r.Recorder.Eventf(mid, nil, corev1.EventTypeNormal, "MeshTrustCreated", "KeepMeshTrust",
			"MeshTrust %s trusts the issuer's root %s for trust domain %q", key, subjects(roots), td)
		return due, true, nil
	}
	if sameMeshTrust(&existing, desired) {
		return due, true, nil
	}
	// Labels and annotations meshcert does not set, Kuma's among them, stay.
	updated := existing.DeepCopy()
	updated.Labels = merged(updated.Labels, desired.Labels)
	updated.Annotations = merged(updated.Annotations, desired.Annotations)
	if _, ok := desired.Annotations[RetiringAnnotation]; !ok {
		delete(updated.Annotations, RetiringAnnotation)
	}
	updated.OwnerReferences = desired.OwnerReferences
	updated.Spec, updated.Status = desired.Spec, desired.Status
	if err := r.Client.Update(ctx, updated); err != nil {
		return 0, false, err
	}
	for _, s := range added {
		r.Recorder.Eventf(mid, nil, corev1.EventTypeNormal, "RootAdded", "KeepMeshTrust",
			"the issuer's new root %q is trusted beside the old one, which stays until no certificate it signed can still be valid (%s)", s, lifetime)
	}
	for _, s := range retired {
		r.Recorder.Eventf(mid, nil, corev1.EventTypeNormal, "RootRetired", "KeepMeshTrust",
			"the old root %q left MeshTrust %s: every certificate it signed has expired", s, key)
	}
	return due, true, nil
}

// foreignMeshTrust names a MeshTrust that meshcert did not make and that
// trusts the trust domain in the mesh, if there is one.
func (r *Reconciler) foreignMeshTrust(ctx context.Context, mesh, td string) string {
	var list kuma.MeshTrustResourceList
	if err := r.Client.List(ctx, &list, client.InNamespace(r.SystemNamespace)); err != nil {
		return ""
	}
	for _, mt := range list.Items {
		if mt.Labels[kuma.ManagedByLabel] != kuma.ManagedByValue && kuma.MeshOfSecret(mt.Labels) == mesh && mt.Spec.TrustDomain == td {
			return mt.Namespace + "/" + mt.Name
		}
	}
	return ""
}

// report tells of a condition of an identity once, not again on every
// reconcile while it lasts.
func (r *Reconciler) report(mid *kuma.MeshIdentityResource, eventType, reason, format string, args ...any) {
	owner := issuance.MeshIdentityOwner(client.ObjectKeyFromObject(mid))
	msg := fmt.Sprintf(format, args...)
	if r.reported[owner] == reason+": "+msg {
		return
	}
	r.reported[owner] = reason + ": " + msg
	r.Recorder.Eventf(mid, nil, eventType, reason, "KeepMeshTrust", "%s", msg)
}

// forget deletes the MeshTrust meshcert kept for an identity, and its probes.
func (r *Reconciler) forget(ctx context.Context, key types.NamespacedName, owner issuance.Owner) error {
	forgetMetrics(key.Name)
	r.roots.Prune(owner.String(), nil)
	if err := r.prober.Cleanup(ctx, owner); err != nil {
		return err
	}
	var mt kuma.MeshTrustResource
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.SystemNamespace, Name: key.Name}, &mt)
	if apierrors.IsNotFound(err) || (err == nil && (mt.Labels[kuma.ManagedByLabel] != kuma.ManagedByValue || mt.Annotations[kuma.MeshIdentityAnnotation] != key.Name)) {
		return nil
	}
	if err != nil {
		return err
	}
	return client.IgnoreNotFound(r.Client.Delete(ctx, &mt, client.Preconditions{UID: &mt.UID}))
}

// merged is m with every key of set set to its value.
func merged(m, set map[string]string) map[string]string {
	if m == nil {
		m = map[string]string{}
	}
	maps.Copy(m, set)
	return m
}

// sameMeshTrust says whether existing holds all that meshcert would write:
// its labels, annotations, owner, spec and origin, whatever else it holds.
func sameMeshTrust(a, b *kuma.MeshTrustResource) bool {
	for k, v := range b.Labels {
		if got, ok := a.Labels[k]; !ok || got != v {
			return false
		}
	}
	for k, v := range b.Annotations {
		if got, ok := a.Annotations[k]; !ok || got != v {
			return false
		}
	}
	_, retiring := b.Annotations[RetiringAnnotation]
	_, wasRetiring := a.Annotations[RetiringAnnotation]
	return retiring == wasRetiring && equality.Semantic.DeepEqual(a.OwnerReferences, b.OwnerReferences) &&
		a.Spec.TrustDomain == b.Spec.TrustDomain &&
		len(a.Spec.CABundles) == 1 && a.Spec.CABundles[0].PEM != nil && a.Spec.CABundles[0].PEM.Value == b.Spec.CABundles[0].PEM.Value &&
		a.Status != nil && a.Status.Origin != nil && ptr.Deref(a.Status.Origin.KRI, "") == ptr.Deref(b.Status.Origin.KRI, "")
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// parseRetiring reads "fingerprint=time,..." into a map; what does not parse
// is dropped, and the root it named is then retired from now on.
func parseRetiring(s string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, item := range strings.Split(s, ",") {
		fp, at, ok := strings.Cut(item, "=")
		if t, err := time.Parse(time.RFC3339, at); ok && err == nil {
			out[fp] = t
		}
	}
	return out
}

func formatRetiring(m map[string]time.Time) string {
	items := make([]string, 0, len(m))
	for fp, t := range m {
		items = append(items, fp+"="+t.UTC().Format(time.RFC3339))
	}
	sort.Strings(items)
	return strings.Join(items, ",")
}

func subjects(certs []*x509.Certificate) string {
	names := make([]string, len(certs))
	for i, c := range certs {
		names[i] = fmt.Sprintf("%q", c.Subject.String())
	}
	return strings.Join(names, ", ")
}
