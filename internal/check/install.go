package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/approval"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/webhook"
)

// InstallGroup is the group of the install's checks.
const InstallGroup = "install"

// Install checks meshcert's install: the CRDs it needs, its webhooks, its
// node agents and the approval of their requests.
func (c *Checker) Install(ctx context.Context, r *Report) error {
	g := group{report: r, name: InstallGroup}
	for _, step := range []func(context.Context, group) error{c.crds, c.webhooks, c.agents, c.approval} {
		if err := step(ctx, g); err != nil {
			return err
		}
	}
	return nil
}

// requiredCRDs are the CRDs meshcert reads, by the project that owns them.
var requiredCRDs = []struct {
	owner, hint string
	names       []string
}{
	{"Kuma", "install Kuma's CRDs (Kuma's chart), or meshcert's chart with kumaCRDs.install=true for MeshIdentity and MeshTrust",
		[]string{"meshes.kuma.io", "dataplanes.kuma.io", "meshidentities.kuma.io", "meshtrusts.kuma.io"}},
	{"cert-manager", "install cert-manager (its chart with crds.enabled=true)",
		[]string{"certificaterequests.cert-manager.io", "issuers.cert-manager.io", "clusterissuers.cert-manager.io"}},
}

func (c *Checker) crds(ctx context.Context, g group) error {
	for _, want := range requiredCRDs {
		var missing []string
		for _, name := range want.names {
			err := c.Client.Get(ctx, client.ObjectKey{Name: name}, &apiextensionsv1.CustomResourceDefinition{})
			switch {
			case apierrors.IsNotFound(err):
				missing = append(missing, name)
			case err != nil:
				return fmt.Errorf("reading CRD %s: %w", name, err)
			}
		}
		name := want.owner + " CRDs"
		if len(missing) > 0 {
			g.add(name, Fail, want.hint, "missing: %s", strings.Join(missing, ", "))
			continue
		}
		g.pass(name, "%s installed", strings.Join(want.names, ", "))
	}
	return nil
}

// registered is one of meshcert's webhooks as the API server has it.
type registered struct {
	name, configuration string
	clientConfig        admissionregistrationv1.WebhookClientConfig
}

// webhookNames are the webhooks meshcert registers.
var webhookNames = []string{
	webhook.DefaultingWebhookName, webhook.MeshIdentityDefaultingWebhookName,
	webhook.ValidatingWebhookName, webhook.MeshIdentityValidatingWebhookName,
}

const webhookHint = "install or upgrade meshcert's chart (helm upgrade --install meshcert charts/meshcert -n <namespace>)"

func (c *Checker) webhooks(ctx context.Context, g group) error {
	var mutating admissionregistrationv1.MutatingWebhookConfigurationList
	var validating admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := c.Client.List(ctx, &mutating); err != nil {
		return fmt.Errorf("listing MutatingWebhookConfigurations: %w", err)
	}
	if err := c.Client.List(ctx, &validating); err != nil {
		return fmt.Errorf("listing ValidatingWebhookConfigurations: %w", err)
	}
	found := map[string]registered{}
	for _, conf := range mutating.Items {
		for _, w := range conf.Webhooks {
			found[w.Name] = registered{w.Name, "MutatingWebhookConfiguration " + conf.Name, w.ClientConfig}
		}
	}
	for _, conf := range validating.Items {
		for _, w := range conf.Webhooks {
			found[w.Name] = registered{w.Name, "ValidatingWebhookConfiguration " + conf.Name, w.ClientConfig}
		}
	}
	var missing, configurations []string
	var hooks []registered
	for _, name := range webhookNames {
		w, ok := found[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		hooks = append(hooks, w)
		if !slices.Contains(configurations, w.configuration) {
			configurations = append(configurations, w.configuration)
		}
	}
	if len(missing) > 0 {
		g.add("webhooks registered", Fail, webhookHint, "not registered: %s", strings.Join(missing, ", "))
	} else {
		g.pass("webhooks registered", "%d webhooks in %s", len(hooks), strings.Join(configurations, " and "))
	}
	if len(hooks) == 0 {
		return nil
	}
	if err := c.servingCertificates(ctx, g, hooks); err != nil {
		return err
	}
	c.admission(ctx, g)
	return nil
}

// servingCertificates checks, for each place the webhooks are served, that
// the certificate served there verifies against each webhook's caBundle for
// the name the API server dials, and is not about to expire. A URL is dialled;
// a Service's certificate is read from the Secret its Deployment mounts, since
// its endpoints are seldom reachable from where the check runs.
func (c *Checker) servingCertificates(ctx context.Context, g group, hooks []registered) error {
	type endpoint struct {
		what     string
		bundles  map[string][]string
		hostname string
		service  *admissionregistrationv1.ServiceReference
		url      string
	}
	var order []string
	endpoints := map[string]*endpoint{}
	for _, w := range hooks {
		cc := w.clientConfig
		var e endpoint
		switch {
		case cc.Service != nil:
			e = endpoint{what: fmt.Sprintf("Service %s/%s", cc.Service.Namespace, cc.Service.Name),
				hostname: cc.Service.Name + "." + cc.Service.Namespace + ".svc", service: cc.Service}
		case cc.URL != nil:
			u, err := url.Parse(*cc.URL)
			if err != nil {
				g.add("webhook certificate", Fail, webhookHint, "webhook %s has an invalid URL %q: %v", w.name, *cc.URL, err)
				continue
			}
			e = endpoint{what: "URL https://" + u.Host, hostname: u.Hostname(), url: u.Host}
		default:
			continue
		}
		if endpoints[e.what] == nil {
			e.bundles = map[string][]string{}
			endpoints[e.what] = &e
			order = append(order, e.what)
		}
		endpoints[e.what].bundles[string(cc.CABundle)] = append(endpoints[e.what].bundles[string(cc.CABundle)], w.name)
	}
	now := c.Clock.Now()
	for _, what := range order {
		e := endpoints[what]
		var chain []*x509.Certificate
		var source, problem, hint string
		if e.service != nil {
			chain, source, problem = c.serviceCertificate(ctx, e.service)
			hint = "see that the Secret holds a certificate for " + e.hostname + " (cert-manager's Certificate of the chart, or webhook.certificate.secretName)"
		} else {
			chain, problem = dialCertificate(ctx, e.url, e.hostname)
			source = "dialled"
			hint = "start meshcert's webhook server there, or correct the webhook's URL"
		}
		if problem != "" {
			g.add("webhook certificate", Fail, hint, "%s: %s", e.what, problem)
			continue
		}
		leaf := chain[0]
		pool := x509.NewCertPool()
		intermediates := x509.NewCertPool()
		for _, cert := range chain[1:] {
			intermediates.AddCert(cert)
		}
		var bad []string
		for bundle, names := range e.bundles {
			pool := pool.Clone()
			if !pool.AppendCertsFromPEM([]byte(bundle)) {
				bad = append(bad, fmt.Sprintf("the caBundle of %s holds no certificate", strings.Join(names, ", ")))
				continue
			}
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: e.hostname, Roots: pool, Intermediates: intermediates, CurrentTime: now}); err != nil {
				bad = append(bad, fmt.Sprintf("the caBundle of %s does not verify it: %v", strings.Join(names, ", "), err))
			}
		}
		sort.Strings(bad)
		switch {
		case len(bad) > 0:
			g.add("webhook certificate", Fail, "let cert-manager's cainjector fill the caBundle (webhook.certificate.source=cert-manager), or set webhook.certificate.caBundle to the CA that signed the Secret",
				"%s (%s): %s", e.what, source, strings.Join(bad, "; "))
		case leaf.NotAfter.Sub(now) < FailWithin:
			g.add("webhook certificate", Warn, "renew it before it expires; with the chart's cert-manager Certificate, its renewal is overdue: see its Events (kubectl -n "+c.Namespace+" describe certificate)",
				"%s (%s): verifies for %s, but %s", e.what, source, e.hostname, until(leaf.NotAfter, now))
		default:
			g.pass("webhook certificate", "%s (%s): verifies for %s against the caBundle, %s", e.what, source, e.hostname, until(leaf.NotAfter, now))
		}
	}
	return nil
}

// serviceCertificate reads the serving certificate of a webhook Service from
// the Secret mounted by the Deployment whose pods the Service selects.
func (c *Checker) serviceCertificate(ctx context.Context, ref *admissionregistrationv1.ServiceReference) (chain []*x509.Certificate, source, problem string) {
	var svc corev1.Service
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &svc); err != nil {
		return nil, "", fmt.Sprintf("reading the Service: %v", err)
	}
	var deployments appsv1.DeploymentList
	if err := c.Client.List(ctx, &deployments, client.InNamespace(ref.Namespace)); err != nil {
		return nil, "", fmt.Sprintf("listing the Deployments: %v", err)
	}
	selector := labels.SelectorFromSet(svc.Spec.Selector)
	var secretName string
	for _, d := range deployments.Items {
		if len(svc.Spec.Selector) == 0 || !selector.Matches(labels.Set(d.Spec.Template.Labels)) {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret != nil && (secretName == "" || v.Name == "webhook-tls") {
				secretName = v.Secret.SecretName
			}
		}
	}
	if secretName == "" {
		return nil, "", "no Deployment selected by the Service mounts a Secret"
	}
	source = fmt.Sprintf("Secret %s/%s", ref.Namespace, secretName)
	var secret corev1.Secret
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: secretName}, &secret); err != nil {
		return nil, source, fmt.Sprintf("reading %s: %v", source, err)
	}
	chain, err := pki.DecodeX509CertificateChainBytes(secret.Data[corev1.TLSCertKey])
	if err != nil {
		return nil, source, fmt.Sprintf("%s has no valid %s: %v", source, corev1.TLSCertKey, err)
	}
	return chain, source, ""
}

// dialCertificate reads the certificate served at host:port. Verification is
// the caller's, against each webhook's caBundle.
func dialCertificate(ctx context.Context, hostport, serverName string) ([]*x509.Certificate, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{ServerName: serverName, InsecureSkipVerify: true}} //nolint:gosec // Verified against the caBundle by the caller.
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, fmt.Sprintf("not reachable: %v", err)
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates, ""
}

// dryRunMesh is the Mesh the admission check creates in a dry run.
const dryRunMesh = "meshcert-check-dry-run"

// admission asks the API server to admit a Mesh in a dry run, which calls
// meshcert's Mesh webhooks as any write would: from where the API server
// runs, through the Service, verifying the caBundle. The MeshIdentity
// webhooks are served by the same server with the same certificate.
func (c *Checker) admission(ctx context.Context, g group) {
	mesh := &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: dryRunMesh}, Spec: json.RawMessage(`{}`)}
	err := c.Client.Create(ctx, mesh, client.DryRunAll)
	if err == nil || apierrors.IsAlreadyExists(err) {
		g.pass("webhook admission", "the API server admitted a dry-run Mesh through meshcert's webhooks")
		return
	}
	msg := err.Error()
	for _, name := range webhookNames {
		switch {
		case strings.Contains(msg, fmt.Sprintf("failed calling webhook %q", name)):
			g.add("webhook admission", Fail, "see that meshcert's pods are Ready and the caBundle matches their certificate; until then every write of a Mesh or MeshIdentity fails (failurePolicy Fail)",
				"the API server cannot call meshcert's webhooks: %s", msg)
			return
		case strings.Contains(msg, fmt.Sprintf("admission webhook %q denied", name)):
			g.pass("webhook admission", "the API server reached meshcert's webhooks (they denied the dry-run Mesh: %s)", msg)
			return
		}
	}
	g.add("webhook admission", Warn, "run the check as a user who may create Meshes, or try kubectl create --dry-run=server",
		"could not tell whether the webhooks are called: the dry-run Mesh failed: %s", msg)
}

// agents checks that an agent is Ready on every node that runs a workload
// whose identity meshcert's agent serves.
func (c *Checker) agents(ctx context.Context, g group) error {
	need, err := c.agentNodes(ctx)
	if err != nil {
		return err
	}
	ready, daemonSets, err := c.readyAgents(ctx)
	if err != nil {
		return err
	}
	nodes := slices.Sorted(func(yield func(string) bool) {
		for n := range need {
			if !yield(n) {
				return
			}
		}
	})
	var missing []string
	workloads := 0
	for _, n := range nodes {
		workloads += len(need[n])
		if !ready[n] {
			missing = append(missing, fmt.Sprintf("%s (%s)", n, strings.Join(need[n], ", ")))
		}
	}
	switch {
	case len(nodes) == 0:
		g.pass("agents", "no workload has an identity that meshcert's agent serves")
	case len(daemonSets) == 0:
		g.add("agents", Fail, "install the agent: helm upgrade meshcert charts/meshcert -n "+c.Namespace+" --set agent.enabled=true",
			"no agent DaemonSet in namespace %s, and %d workloads on %d nodes need one", c.Namespace, workloads, len(nodes))
	case len(missing) > 0:
		g.add("agents", Fail, fmt.Sprintf("see why the agent does not run there: kubectl -n %s describe daemonset %s (tolerations, nodeSelector)", c.Namespace, strings.Join(daemonSets, ",")),
			"no Ready agent on %d of %d nodes with workloads it serves: %s", len(missing), len(nodes), strings.Join(missing, "; "))
	default:
		g.pass("agents", "a Ready agent on each of the %d nodes with workloads it serves (%d workloads)", len(nodes), workloads)
	}
	return nil
}

// agentNodes lists, by node, the Dataplanes whose identity meshcert's agent
// serves: by Kuma's choice of MeshIdentity.
func (c *Checker) agentNodes(ctx context.Context) (map[string][]string, error) {
	identities, err := c.meshIdentities(ctx)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(identities, func(m *kuma.MeshIdentityResource) bool { return m.ServedBy() == kuma.ServedByAgent }) {
		return nil, nil
	}
	var dataplanes kuma.DataplaneResourceList
	if err := c.Client.List(ctx, &dataplanes); err != nil {
		return nil, fmt.Errorf("listing Dataplanes: %w", err)
	}
	need := map[string][]string{}
	for i := range dataplanes.Items {
		dp := &dataplanes.Items[i]
		mid := kuma.SelectMeshIdentity(identities, dp.MeshName(), kuma.LabelView(dp))
		if mid == nil || mid.ServedBy() != kuma.ServedByAgent {
			continue
		}
		node, err := c.nodeOf(ctx, dp)
		if err != nil {
			return nil, err
		}
		if node != "" {
			need[node] = append(need[node], dp.Namespace+"/"+dp.Name)
		}
	}
	return need, nil
}

// nodeOf is the node of a Dataplane's workload: its Pod's, or the node a VM's
// Dataplane is bound to; "" when its Pod is gone or not scheduled.
func (c *Checker) nodeOf(ctx context.Context, dp *kuma.DataplaneResource) (string, error) {
	if node, ok := dp.Annotations[kuma.NodeNameAnnotation]; ok {
		return node, nil
	}
	var pod corev1.Pod
	err := c.Client.Get(ctx, client.ObjectKeyFromObject(dp), &pod)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	return pod.Spec.NodeName, err
}

// readyAgents are the nodes where a pod of an agent DaemonSet of the release
// namespace is Ready, and the DaemonSets' names.
func (c *Checker) readyAgents(ctx context.Context) (map[string]bool, []string, error) {
	var list appsv1.DaemonSetList
	if err := c.Client.List(ctx, &list, client.InNamespace(c.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "agent"}); err != nil {
		return nil, nil, fmt.Errorf("listing the agent DaemonSets: %w", err)
	}
	ready := map[string]bool{}
	var names []string
	for _, ds := range list.Items {
		names = append(names, ds.Name)
		selector, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
		if err != nil {
			continue
		}
		var pods corev1.PodList
		if err := c.Client.List(ctx, &pods, client.InNamespace(c.Namespace), client.MatchingLabelsSelector{Selector: selector}); err != nil {
			return nil, nil, fmt.Errorf("listing the agents of DaemonSet %s: %w", ds.Name, err)
		}
		for _, p := range pods.Items {
			if podReady(&p) {
				ready[p.Spec.NodeName] = true
			}
		}
	}
	return ready, names, nil
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// recentRequests is how many of the agents' latest requests approval looks at.
const recentRequests = 50

// approval checks that the agents' requests are approved by meshcert, which
// checks the node, and not by cert-manager's default approver, which approves
// everything: from the Approved condition of the latest requests kept, and
// from the Events meshcert's approver records when it sees one approved
// elsewhere (Events last an hour by default).
func (c *Checker) approval(ctx context.Context, g group) error {
	requests, err := c.requests(ctx, func(cr *cmapi.CertificateRequest) bool {
		return cr.Annotations[kuma.DataplaneAnnotation] != ""
	})
	if err != nil {
		return err
	}
	requests = requests[:min(len(requests), recentRequests)]
	elsewhere := map[string]int{}
	judged := 0
	for _, cr := range requests {
		if !apiutil.CertificateRequestIsApproved(cr) {
			continue
		}
		judged++
		if cond := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionApproved); cond.Reason != approval.Reason {
			elsewhere[cond.Reason]++
		}
	}
	events, err := c.events(ctx, c.SystemNamespace, func(e *corev1.Event) bool { return e.Reason == approval.ApprovedElsewhereReason })
	if err != nil {
		return err
	}
	const hint = "turn off cert-manager's default approver for meshcert's issuers: install cert-manager with disableAutoApproval=true (and approver-policy for meshcert's other requests), or approveSignerNames without them"
	switch {
	case len(elsewhere) > 0:
		var by []string
		for reason, n := range elsewhere {
			by = append(by, fmt.Sprintf("%d by %q", n, reason))
		}
		sort.Strings(by)
		g.add("approval", Fail, hint, "of the last %d agent requests approved, %s, without meshcert's node check", judged, strings.Join(by, ", "))
	case len(events) > 0:
		g.add("approval", Fail, hint, "%d %s Events in %s: an agent request was approved without meshcert's node check (%s)",
			len(events), approval.ApprovedElsewhereReason, c.SystemNamespace, events[0].Message)
	case judged == 0:
		g.pass("approval", "no approved agent request is kept to judge, and no %s Event", approval.ApprovedElsewhereReason)
	default:
		g.pass("approval", "the last %d agent requests approved were approved by meshcert (reason %q)", judged, approval.Reason)
	}
	return nil
}

// requests are meshcert's CertificateRequests of the system namespace that
// match, newest first.
func (c *Checker) requests(ctx context.Context, match func(*cmapi.CertificateRequest) bool) ([]*cmapi.CertificateRequest, error) {
	var list cmapi.CertificateRequestList
	if err := c.Client.List(ctx, &list, client.InNamespace(c.SystemNamespace), client.MatchingLabels{kuma.ManagedByLabel: kuma.ManagedByValue}); err != nil {
		return nil, fmt.Errorf("listing CertificateRequests: %w", err)
	}
	var out []*cmapi.CertificateRequest
	for i := range list.Items {
		if match(&list.Items[i]) {
			out = append(out, &list.Items[i])
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if a, b := out[i].CreationTimestamp, out[j].CreationTimestamp; !a.Equal(&b) {
			return b.Before(&a)
		}
		return out[i].Name > out[j].Name
	})
	return out, nil
}

// events are the Events of a namespace that match, newest first.
func (c *Checker) events(ctx context.Context, namespace string, match func(*corev1.Event) bool) ([]*corev1.Event, error) {
	var list corev1.EventList
	if err := c.Client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("listing the Events of %s: %w", namespace, err)
	}
	var out []*corev1.Event
	for i := range list.Items {
		if match(&list.Items[i]) {
			out = append(out, &list.Items[i])
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return eventTime(out[j]).Before(eventTime(out[i])) })
	return out, nil
}

// eventTime is when an Event last happened, whichever API recorded it.
func eventTime(e *corev1.Event) time.Time {
	for _, t := range []time.Time{e.LastTimestamp.Time, e.EventTime.Time, e.FirstTimestamp.Time} {
		if !t.IsZero() {
			return t
		}
	}
	return e.CreationTimestamp.Time
}

// meshIdentities are the MeshIdentities of the system namespace, where Kuma
// admits them.
func (c *Checker) meshIdentities(ctx context.Context) ([]*kuma.MeshIdentityResource, error) {
	var list kuma.MeshIdentityResourceList
	if err := c.Client.List(ctx, &list, client.InNamespace(c.SystemNamespace)); err != nil {
		return nil, fmt.Errorf("listing MeshIdentities: %w", err)
	}
	return kuma.MeshIdentityPointers(list.Items), nil
}
