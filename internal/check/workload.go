package check

import (
	"context"
	"fmt"
	"strings"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
)

// maxEvents is how many Events of a workload are quoted.
const maxEvents = 5

// Workload says why a pod has, or has not, an identity from meshcert: its
// Dataplane, the MeshIdentity Kuma selects for it (or its Mesh's backend),
// its SPIFFE ID, the agent on its node, its certificate's expiry, the last
// request's outcome and the Events of the Pod, the Dataplane and the identity.
func (c *Checker) Workload(ctx context.Context, r *Report, pod types.NamespacedName) error {
	g := group{report: r, name: "workload " + pod.String()}
	var p corev1.Pod
	if err := c.Client.Get(ctx, pod, &p); err != nil {
		if apierrors.IsNotFound(err) {
			g.add("pod", Fail, "name a pod as <namespace>/<name>: kubectl get pods -A", "pod %s does not exist", pod)
			return nil
		}
		return fmt.Errorf("reading pod %s: %w", pod, err)
	}
	if p.Spec.NodeName == "" {
		g.add("pod", Warn, "wait for it to be scheduled: kubectl describe pod", "pod %s is not scheduled yet", pod)
	} else {
		g.pass("pod", "runs on node %s (%s)", p.Spec.NodeName, p.Status.Phase)
	}

	var dp kuma.DataplaneResource
	if err := c.Client.Get(ctx, pod, &dp); err != nil {
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading Dataplane %s: %w", pod, err)
		}
		g.add("Dataplane", Fail, "Kuma makes it for a pod with its sidecar: label the namespace kuma.io/sidecar-injection=enabled and restart the pod",
			"no Dataplane %s: the pod is not in the mesh", pod)
		return c.workloadEvents(ctx, g, &p, nil, nil)
	}
	if err := kuma.CheckOwnedByPod(&dp, &p); err != nil {
		g.add("Dataplane", Fail, "only the Dataplane Kuma made for the pod gets its identity", "%v", err)
		return c.workloadEvents(ctx, g, &p, &dp, nil)
	}
	mesh, labels := dp.MeshName(), kuma.LabelView(&dp)
	g.pass("Dataplane", "Dataplane %s of mesh %s, with tags %s", pod, mesh, strings.Join(dataplaneTags(&dp), ", "))

	identities, err := c.meshIdentities(ctx)
	if err != nil {
		return err
	}
	mid := kuma.SelectMeshIdentity(identities, mesh, labels)
	switch {
	case mid == nil:
		err = c.backendWorkload(ctx, g, &dp)
	case mid.ServedBy() == kuma.ServedByAgent:
		err = c.agentWorkload(ctx, g, &dp, identities, p.Spec.NodeName)
	case mid.ServedBy() == kuma.ServedByExtension:
		g.pass("identity", "MeshIdentity %s selects it; Kong Mesh's certmanager extension issues its certificate", mid.Name)
	default:
		g.add("identity", Fail, "select the workload with a MeshIdentity of meshcert (provider Spire with meshcert.io/issuer-name), or leave it to the one Kuma chose",
			"MeshIdentity %s selects it, and meshcert does not serve it (provider %s)", mid.Name, providerType(mid))
	}
	if err != nil {
		return err
	}
	return c.workloadEvents(ctx, g, &p, &dp, mid)
}

// agentWorkload reports the identity meshcert's agent serves a Dataplane:
// its SPIFFE ID, the agent on its node, and the latest request of that
// identity on that node, which the agent deletes once issued unless kept.
func (c *Checker) agentWorkload(ctx context.Context, g group, dp *kuma.DataplaneResource, identities []*kuma.MeshIdentityResource, node string) error {
	id, err := kuma.AgentIdentityOf(identities, dp, c.Zone)
	if err != nil {
		g.add("identity", Fail, "fix the MeshIdentity's spiffeID templates", "%v", err)
		return nil
	}
	g.pass("identity", "MeshIdentity %s selects it: %s, served by meshcert's agent", id.MeshIdentity.Name, id.SpiffeID)
	if bound, ok := dp.Annotations[kuma.NodeNameAnnotation]; ok {
		node = bound
	}
	ready, daemonSets, err := c.readyAgents(ctx)
	if err != nil {
		return err
	}
	switch {
	case node == "":
		g.add("agent", Warn, "wait for the pod to be scheduled", "the workload has no node yet")
	case ready[node]:
		g.pass("agent", "a Ready agent runs on node %s", node)
	case len(daemonSets) == 0:
		g.add("agent", Fail, "install the agent: helm upgrade meshcert charts/meshcert -n "+c.Namespace+" --set agent.enabled=true",
			"no agent DaemonSet in namespace %s", c.Namespace)
	default:
		g.add("agent", Fail, fmt.Sprintf("see why: kubectl -n %s describe daemonset %s", c.Namespace, strings.Join(daemonSets, ",")),
			"no Ready agent on node %s", node)
	}
	name := dp.Namespace + "/" + dp.Name
	requests, err := c.requests(ctx, func(cr *cmapi.CertificateRequest) bool {
		return cr.Labels[agent.NodeLabel] == kuma.LabelValue(node) && cr.Annotations[kuma.MeshIdentityAnnotation] == id.MeshIdentity.Name &&
			requestFor(cr, id.SpiffeID)
	})
	if err != nil {
		return err
	}
	if len(requests) == 0 {
		g.add("certificate", Warn, "ask the agent: meshcert fetch from inside the pod, or its logs (kubectl -n "+c.Namespace+" logs <agent pod on "+node+">)",
			"unknown: no request for %s on node %s is kept (the agent deletes its requests once issued)", id.SpiffeID, node)
		return nil
	}
	c.requestOutcome(g, requests[0], name)
	return nil
}

// requestFor tells whether a request asks for the SPIFFE ID.
func requestFor(cr *cmapi.CertificateRequest, spiffeID string) bool {
	csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
	if err != nil {
		return false
	}
	for _, u := range csr.URIs {
		if u.String() == spiffeID {
			return true
		}
	}
	return false
}

// backendWorkload reports the certificate meshcert delivers for a Dataplane
// of a Mesh with a certmanager backend: the Secret and its last request.
func (c *Checker) backendWorkload(ctx context.Context, g group, dp *kuma.DataplaneResource) error {
	var m kuma.MeshResource
	err := c.Client.Get(ctx, client.ObjectKey{Name: dp.MeshName()}, &m)
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("reading Mesh %s: %w", dp.MeshName(), err)
	}
	spec, _ := kuma.ParseMeshSpec(m.Spec)
	backend := spec.EnabledCertManagerBackend()
	if err != nil || backend == nil {
		g.add("identity", Fail, "select it with a MeshIdentity of meshcert, or enable a certmanager backend on its Mesh",
			"no MeshIdentity selects it, and Mesh %s has no enabled certmanager backend", dp.MeshName())
		return nil
	}
	g.pass("identity", "no MeshIdentity selects it; Mesh %s's backend %s issues its certificate, which meshcert delivers as a Secret", dp.MeshName(), backend.Name)
	secretName := dataplane.SecretName(dp.Name)
	var s corev1.Secret
	err = c.Client.Get(ctx, client.ObjectKey{Namespace: dp.Namespace, Name: secretName}, &s)
	now := c.Clock.Now()
	switch {
	case apierrors.IsNotFound(err):
		g.add("certificate", Fail, "see the Dataplane's Events and meshcert's logs", "no Secret %s/%s delivered yet", dp.Namespace, secretName)
	case err != nil:
		return fmt.Errorf("reading Secret %s/%s: %w", dp.Namespace, secretName, err)
	default:
		chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
		if err != nil {
			g.add("certificate", Fail, "see meshcert's logs", "Secret %s/%s holds no valid certificate: %v", dp.Namespace, secretName, err)
			break
		}
		status := Pass
		if !now.Before(chain[0].NotAfter) {
			status = Fail
		}
		uris := make([]string, 0, len(chain[0].URIs))
		for _, u := range chain[0].URIs {
			uris = append(uris, u.String())
		}
		g.add("certificate", status, "see why it was not renewed: the Dataplane's Events and meshcert's logs",
			"Secret %s/%s: %s, %s", dp.Namespace, secretName, strings.Join(uris, ", "), until(chain[0].NotAfter, now))
	}
	name := dp.Namespace + "/" + dp.Name
	requests, err := c.requests(ctx, func(cr *cmapi.CertificateRequest) bool {
		return cr.Labels[kuma.DataplaneNamespaceLabel] == kuma.LabelValue(dp.Namespace) &&
			cr.Annotations[kuma.DataplaneNamespaceAnnotation] == dp.Namespace && cr.Annotations[kuma.DataplaneNameAnnotation] == dp.Name
	})
	if err != nil {
		return err
	}
	if len(requests) > 0 {
		c.requestOutcome(g, requests[0], name)
	}
	return nil
}

// requestOutcome reports the latest request of a workload: denied, failed,
// pending or issued, and until when.
func (c *Checker) requestOutcome(g group, cr *cmapi.CertificateRequest, workload string) {
	now := c.Clock.Now()
	ready := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionReady)
	switch {
	case apiutil.CertificateRequestIsDenied(cr):
		denied := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionDenied)
		g.add("last request", Fail, "the approver denied it: see its reason, and the approval policy of the issuer",
			"CertificateRequest %s was denied by %q: %s", cr.Name, denied.Reason, denied.Message)
	case ready != nil && ready.Status == cmmeta.ConditionFalse && ready.Reason == cmapi.CertificateRequestReasonFailed:
		g.add("last request", Fail, "see the issuer: kubectl describe certificaterequest -n "+cr.Namespace+" "+cr.Name,
			"CertificateRequest %s failed: %s", cr.Name, ready.Message)
	case len(cr.Status.Certificate) == 0:
		g.add("last request", Warn, "wait, or see why it is pending: kubectl describe certificaterequest -n "+cr.Namespace+" "+cr.Name,
			"CertificateRequest %s is pending", cr.Name)
	default:
		chain, err := pki.DecodeX509CertificateChainBytes(cr.Status.Certificate)
		if err != nil {
			g.add("last request", Fail, "see the issuer", "CertificateRequest %s holds no valid certificate: %v", cr.Name, err)
			return
		}
		status := Pass
		if !now.Before(chain[0].NotAfter) {
			status = Warn // Expired, and maybe replaced by one no longer kept.
		}
		g.add("last request", status, "see whether it was renewed: the agent's logs", "CertificateRequest %s for %s was issued: its certificate %s", cr.Name, workload, until(chain[0].NotAfter, now))
	}
}

// workloadEvents reports the latest Events of the Pod, the Dataplane and the
// MeshIdentity: any warning among them is a warning.
func (c *Checker) workloadEvents(ctx context.Context, g group, p *corev1.Pod, dp *kuma.DataplaneResource, mid *kuma.MeshIdentityResource) error {
	type subject struct{ kind, namespace, name string }
	subjects := []subject{{"Pod", p.Namespace, p.Name}}
	if dp != nil {
		subjects = append(subjects, subject{"Dataplane", dp.Namespace, dp.Name})
	}
	if mid != nil {
		subjects = append(subjects, subject{"MeshIdentity", mid.Namespace, mid.Name})
	}
	var lines []string
	warnings := 0
	for _, s := range subjects {
		events, err := c.events(ctx, s.namespace, func(e *corev1.Event) bool {
			return e.InvolvedObject.Kind == s.kind && e.InvolvedObject.Name == s.name
		})
		if err != nil {
			return err
		}
		for _, e := range events {
			if e.Type == corev1.EventTypeWarning {
				warnings++
			}
			if len(lines) < maxEvents {
				lines = append(lines, fmt.Sprintf("%s %s %s: %s", s.kind, e.Type, e.Reason, e.Message))
			}
		}
	}
	switch {
	case len(lines) == 0:
		g.pass("events", "none on the Pod, the Dataplane or the MeshIdentity")
	case warnings > 0:
		g.add("events", Warn, "read them whole: kubectl describe", "%d warnings among them; latest: %s", warnings, strings.Join(lines, "; "))
	default:
		g.pass("events", "latest: %s", strings.Join(lines, "; "))
	}
	return nil
}

// dataplaneTags lists a Dataplane's inbound tags, as key=value, sorted.
func dataplaneTags(dp *kuma.DataplaneResource) []string {
	tags, _ := kuma.ParseDataplaneTags(dp.Spec)
	var out []string
	for _, k := range tags.Keys() {
		out = append(out, k+"="+strings.Join(tags[k], "|"))
	}
	return out
}

func providerType(mid *kuma.MeshIdentityResource) string {
	if mid.Spec.Provider == nil {
		return "none"
	}
	return mid.Spec.Provider.Type
}
