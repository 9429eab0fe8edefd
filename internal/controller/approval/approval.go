// Package approval decides the node agents' CertificateRequests. A request
// is approved only for the identity of a pod that runs on the node of the
// agent that asked (the node its pod-bound ServiceAccount token names), from
// the issuer of that identity's MeshIdentity, for no longer than its
// lifetime, and never for a CA: a stolen agent token mints the identities of
// its own node's pods, not the mesh's. SPIRE's server authorises a node's
// agent the same way.
package approval

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"slices"
	"strings"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// NodeNameExtra is where the API server puts the node of a pod-bound
// ServiceAccount token in the user's extra (k8s.io/apiserver v0.37.0,
// pkg/authentication/serviceaccount/util.go), which cert-manager's webhook
// copies into a request's spec.extra (v1.21.2, internal/webhook/admission/
// certificaterequest/identity).
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// Reason is the reason of the conditions meshcert sets.
const Reason = "meshcert.io"

// ApprovedElsewhereReason is the Event recorded on an agent's request that
// another approver approved, without meshcert's node check.
const ApprovedElsewhereReason = "ApprovedElsewhere"

// pendingFor is how long a request whose Dataplane or Pod is not found yet
// waits before it is denied: the agent read them live, and the approver may
// read a moment before they are visible to it.
const pendingFor = 10 * time.Second

// Reconciler approves or denies the requests of one node agent
// ServiceAccount.
type Reconciler struct {
	// Client reads the requests from the informer cache and writes their
	// status.
	Client client.Client
	// Live reads the Dataplane and the Pod a request names from the API
	// server: a decision rests on what is, not on a cache.
	Live client.Reader
	// Identities reads the system namespace's MeshIdentities.
	Identities      client.Reader
	SystemNamespace string
	Zone            string
	// AgentUser is the agent's ServiceAccount as a user name,
	// system:serviceaccount:<namespace>:<name>.
	AgentUser string
	// Signers are the signers whose requests it decides, as cert-manager
	// names them for approval: issuers.cert-manager.io/<namespace>.<name>,
	// clusterissuers.cert-manager.io/<name>, or <resource>.<group>/* for all
	// of a kind. Requests for other signers are left to other approvers.
	Signers []string
	// Mapper maps an issuer kind to its resource and scope.
	Mapper   meta.RESTMapper
	Recorder events.EventRecorder
	Clock    clock.PassiveClock
}

// Reconcile decides one request of the agent, once.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cr := &cmapi.CertificateRequest{}
	if err := r.Client.Get(ctx, req.NamespacedName, cr); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if cr.Spec.Username != r.AgentUser || apiutil.CertificateRequestIsDenied(cr) {
		return ctrl.Result{}, nil
	}
	if apiutil.CertificateRequestIsApproved(cr) {
		if c := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionApproved); c.Reason != Reason {
			// cert-manager's default approver approves everything: the
			// node check was bypassed, and the operator must know.
			r.Recorder.Eventf(cr, nil, corev1.EventTypeWarning, ApprovedElsewhereReason, "Approve",
				"Approved by %q without meshcert's node check: turn off cert-manager's default approver for meshcert's issuers", c.Reason)
		}
		return ctrl.Result{}, nil
	}
	log := logf.FromContext(ctx)
	if signer, ok := r.signerOf(cr); !ok {
		log.V(1).Info("Leaving a request of a signer it does not approve", "signer", signer)
		return ctrl.Result{}, nil
	}
	d, err := r.decide(ctx, cr)
	if err != nil {
		return ctrl.Result{}, err
	}
	if d.wait && r.Clock.Since(cr.CreationTimestamp.Time) < pendingFor {
		log.V(1).Info("Waiting for the request's workload", "reason", d.message)
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	condition, eventType, event := cmapi.CertificateRequestConditionDenied, corev1.EventTypeWarning, "Denied"
	if d.approve {
		condition, eventType, event = cmapi.CertificateRequestConditionApproved, corev1.EventTypeNormal, "Approved"
	}
	apiutil.SetCertificateRequestCondition(cr, condition, cmmeta.ConditionTrue, Reason, d.message)
	if err := r.Client.Status().Update(ctx, cr); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	log.V(1).Info("Decided a node agent's request", "approved", d.approve, "reason", d.message)
	r.Recorder.Eventf(cr, nil, eventType, event, "Approve", "%s", d.message)
	return ctrl.Result{}, nil
}

// signerOf is the request's signer name as cert-manager's approval check
// makes it (v1.21.2, internal/webhook/admission/certificaterequest/approval),
// and whether it is one of r.Signers.
func (r *Reconciler) signerOf(cr *cmapi.CertificateRequest) (string, bool) {
	ref := defaults.IssuerRef(cr.Spec.IssuerRef)
	mapping, err := r.Mapper.RESTMapping(schema.GroupKind{Group: ref.Group, Kind: ref.Kind})
	if err != nil {
		return ref.Kind + "." + ref.Group + "/" + ref.Name, false
	}
	kind := mapping.Resource.Resource + "." + ref.Group
	name := kind + "/" + ref.Name
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		name = kind + "/" + cr.Namespace + "." + ref.Name
	}
	return name, slices.Contains(r.Signers, name) || slices.Contains(r.Signers, kind+"/*")
}

// decision is what to do with a request: approve it, deny it, or (wait)
// deny it only if it stays so for pendingFor.
type decision struct {
	approve bool
	wait    bool
	message string
}

func deny(format string, args ...any) decision {
	return decision{message: fmt.Sprintf(format, args...)}
}

// decide checks a request against what its node may have. Errors are the
// API server's, to retry.
func (r *Reconciler) decide(ctx context.Context, cr *cmapi.CertificateRequest) (decision, error) {
	nodes := cr.Spec.Extra[NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		return deny("the requester's token names no node (%s): a node agent must run with its Pod's ServiceAccount token", NodeNameExtra), nil
	}
	node := nodes[0]
	if cr.Spec.IsCA {
		return deny("a node agent may not request a CA"), nil
	}
	uri, problem := workloadURI(cr)
	if problem != "" {
		return deny("%s", problem), nil
	}
	ns, name, ok := strings.Cut(cr.Annotations[kuma.DataplaneAnnotation], "/")
	if !ok || ns == "" || name == "" {
		return deny("the request names no Dataplane (%s: <namespace>/<name>)", kuma.DataplaneAnnotation), nil
	}
	dp := &kuma.DataplaneResource{}
	if err := r.Live.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, dp); err != nil {
		if apierrors.IsNotFound(err) {
			return decision{wait: true, message: fmt.Sprintf("Dataplane %s/%s does not exist", ns, name)}, nil
		}
		return decision{}, err
	}
	d, err := r.onNode(ctx, dp, node)
	if err != nil || d.message != "" {
		return d, err
	}
	var list kuma.MeshIdentityResourceList
	if err := r.Identities.List(ctx, &list, client.InNamespace(r.SystemNamespace)); err != nil {
		return decision{}, err
	}
	id, err := kuma.AgentIdentityOf(kuma.MeshIdentityPointers(list.Items), dp, r.Zone)
	switch {
	case err != nil:
		return deny("%v", err), nil
	case id.SpiffeID != uri:
		return deny("Dataplane %s/%s is %s, not %s", ns, name, id.SpiffeID, uri), nil
	}
	conf, _ := id.MeshIdentity.CertManagerConf()
	if want := defaults.IssuerRef(conf.IssuerRef); defaults.IssuerRef(cr.Spec.IssuerRef) != want {
		return deny("MeshIdentity %s issues from %s %s (group %s), not the issuer the request names", id.MeshIdentity.Name, want.Kind, want.Name, want.Group), nil
	}
	lifetime := id.MeshIdentity.Lifetime()
	if cr.Spec.Duration == nil || cr.Spec.Duration.Duration > lifetime {
		return deny("the request asks for longer than MeshIdentity %s's lifetime, %s", id.MeshIdentity.Name, lifetime), nil
	}
	return decision{approve: true, message: fmt.Sprintf("%s is the identity of Dataplane %s/%s, on node %s", uri, ns, name, node)}, nil
}

// onNode checks that the Dataplane's workload runs on node: its Pod's, or,
// for the unix attestor, the node the Dataplane is bound to. An empty
// decision is a pass.
func (r *Reconciler) onNode(ctx context.Context, dp *kuma.DataplaneResource, node string) (decision, error) {
	if bound, ok := dp.Annotations[kuma.NodeNameAnnotation]; ok {
		if bound != node {
			return deny("Dataplane %s/%s is bound to node %q, not the requester's %q", dp.Namespace, dp.Name, bound, node), nil
		}
		return decision{}, nil
	}
	pod := &corev1.Pod{}
	if err := r.Live.Get(ctx, client.ObjectKeyFromObject(dp), pod); err != nil {
		if apierrors.IsNotFound(err) {
			return decision{wait: true, message: fmt.Sprintf("pod %s/%s does not exist", dp.Namespace, dp.Name)}, nil
		}
		return decision{}, err
	}
	if err := kuma.CheckOwnedByPod(dp, pod); err != nil {
		return deny("%v", err), nil
	}
	if pod.Spec.NodeName != node {
		return deny("pod %s/%s runs on node %q, not the requester's %q", pod.Namespace, pod.Name, pod.Spec.NodeName, node), nil
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return deny("pod %s/%s has ended (%s)", pod.Namespace, pod.Name, pod.Status.Phase), nil
	}
	return decision{}, nil
}

// workloadURI is the one SPIFFE ID a request's CSR asks for, or what is
// wrong with it: a workload certificate names its URI and nothing else, and
// is used for TLS only.
func workloadURI(cr *cmapi.CertificateRequest) (string, string) {
	csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
	if err != nil {
		return "", fmt.Sprintf("the CSR: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return "", fmt.Sprintf("the CSR's signature: %v", err)
	}
	switch {
	case len(csr.URIs) != 1 || csr.URIs[0].Scheme != "spiffe":
		return "", "the CSR must name exactly one URI, a SPIFFE ID"
	case len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 || csr.Subject.CommonName != "":
		return "", "the CSR may name no DNS name, IP address, email address or common name"
	}
	for _, u := range cr.Spec.Usages {
		if !slices.Contains(issuance.WorkloadUsages, u) {
			return "", fmt.Sprintf("a workload certificate may not have usage %q", u)
		}
	}
	if hasCAExtension(csr) {
		return "", "the CSR asks for a CA"
	}
	return csr.URIs[0].String(), ""
}

// hasCAExtension tells whether the CSR asks for basic constraints with CA
// set, which cert-manager's CA issuer ignores but another signer might not.
func hasCAExtension(csr *x509.CertificateRequest) bool {
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var constraints struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}
		// Unreadable constraints are refused as if they asked for a CA.
		if _, err := asn1.Unmarshal(ext.Value, &constraints); err != nil || constraints.IsCA {
			return true
		}
	}
	return false
}

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
