package check

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/controller/approval"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

const system = "kong-mesh-system"

var now = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func newChecker(objs ...client.Object) *Checker {
	c := fake.NewClientBuilder().WithScheme(Scheme()).WithObjects(objs...).Build()
	return &Checker{Client: c, Namespace: system, SystemNamespace: system, ClusterResourceNamespace: "cert-manager", Zone: "default", Clock: clocktesting.NewFakePassiveClock(now)}
}

// want is a check's expected status and a part of its reason.
type want struct {
	status Status
	reason string
}

// assertResults checks each wanted result, by "<group>: <name>".
func assertResults(t *testing.T, r *Report, wants map[string]want) {
	t.Helper()
	got := map[string]Result{}
	for _, res := range r.Results {
		got[res.Group+": "+res.Name] = res
	}
	for key, w := range wants {
		res, ok := got[key]
		switch {
		case !ok:
			t.Errorf("no check %q; got %+v", key, r.Results)
		case res.Status != w.status || !strings.Contains(res.Reason, w.reason):
			t.Errorf("%s: %s %q, want %s containing %q", key, res.Status, res.Reason, w.status, w.reason)
		case res.Status != Pass && res.Hint == "":
			t.Errorf("%s: %s without a hint", key, res.Status)
		}
	}
}

// caIssuer is a Ready CA Issuer of the system namespace and its Secret.
func caIssuer(t *testing.T, name string, notAfter time.Time) (*testpki.CA, []client.Object) {
	t.Helper()
	ca, err := testpki.New(name, now.Add(-time.Hour), notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return ca, []client.Object{
		&cmapi.Issuer{
			ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: name},
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: name}}},
			Status: cmapi.IssuerStatus{Conditions: []cmapi.IssuerCondition{
				{Type: cmapi.IssuerConditionReady, Status: cmmeta.ConditionTrue, Reason: "KeyPairVerified"},
			}},
		},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: name},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{corev1.TLSCertKey: ca.PEM, corev1.TLSPrivateKeyKey: ca.KeyPEM, "ca.crt": ca.PEM},
		},
	}
}

func agentIdentity(name, issuer string) *kuma.MeshIdentityResource {
	return &kuma.MeshIdentityResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: name, Labels: map[string]string{kuma.MeshLabel: "demo"},
			Annotations: map[string]string{kuma.IssuerNameAnnotation: issuer}},
		Spec: kuma.MeshIdentitySpec{
			Selector: &kuma.IdentitySelector{Dataplane: &kuma.LabelSelector{MatchLabels: map[string]string{"app": "demo"}}},
			Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire, Spire: json.RawMessage(`{}`)},
		},
	}
}

func meshTrust(name, td string, roots ...*testpki.CA) *kuma.MeshTrustResource {
	var pem []byte
	for _, r := range roots {
		pem = append(pem, r.PEM...)
	}
	return &kuma.MeshTrustResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: name, Labels: map[string]string{kuma.MeshLabel: "demo"}},
		Spec:       kuma.MeshTrustSpec{TrustDomain: td, CABundles: []kuma.CABundle{{Type: "Pem", PEM: &kuma.PEM{Value: string(pem)}}}},
	}
}

func mesh(name, spec string) *kuma.MeshResource {
	return &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: json.RawMessage(spec)}
}

const exclusive = `{"meshServices":{"mode":"Exclusive"}}`

func TestIdentities(t *testing.T) {
	const group = "MeshIdentity kong-mesh-system/demo: "
	const td = "demo.default.mesh.local"
	healthy, healthyObjs := caIssuer(t, "mesh-ca", now.Add(365*24*time.Hour))
	soon, soonObjs := caIssuer(t, "soon-ca", now.Add(3*24*time.Hour))
	month, monthObjs := caIssuer(t, "month-ca", now.Add(30*24*time.Hour))
	other, _ := caIssuer(t, "other-ca", now.Add(365*24*time.Hour))
	tests := map[string]struct {
		objs  []client.Object
		wants map[string]want
	}{
		"healthy": {
			objs: append(healthyObjs, agentIdentity("demo", "mesh-ca"), meshTrust("demo", td, healthy), mesh("demo", exclusive)),
			wants: map[string]want{
				group + "issuer":             {Pass, "Issuer kong-mesh-system/mesh-ca is Ready"},
				group + "root":               {Pass, "CN=mesh-ca (from the CA issuer's Secret kong-mesh-system/mesh-ca) expires 2031-01-01T00:00:00Z, in 365 days"},
				group + "issuer certificate": {Pass, "signs with the root itself"},
				group + "MeshTrust":          {Pass, "MeshTrust demo trusts " + td + " with the issuer's root"},
				group + "meshServices":       {Pass, "Exclusive"},
			},
		},
		"issuer gone": {
			objs: []client.Object{agentIdentity("demo", "gone"), meshTrust("demo", td, healthy), mesh("demo", exclusive)},
			wants: map[string]want{
				group + "issuer":    {Fail, "Issuer kong-mesh-system/gone not found"},
				group + "root":      {Warn, "not known"},
				group + "MeshTrust": {Warn, "not known to compare"},
			},
		},
		"root expires within a week": {
			objs: append(soonObjs, agentIdentity("demo", "soon-ca"), meshTrust("demo", td, soon), mesh("demo", exclusive)),
			wants: map[string]want{
				group + "root":               {Fail, "in 3 days"},
				group + "issuer certificate": {Fail, "in 3 days"},
			},
		},
		"root expires within 60 days": {
			objs: append(monthObjs, agentIdentity("demo", "month-ca"), meshTrust("demo", td, month), mesh("demo", exclusive)),
			wants: map[string]want{
				group + "root": {Warn, "in 30 days"},
			},
		},
		"MeshTrust without the issuer's root": {
			objs: append(healthyObjs, agentIdentity("demo", "mesh-ca"), meshTrust("demo", td, other), mesh("demo", exclusive)),
			wants: map[string]want{
				group + "MeshTrust": {Fail, "trusts demo.default.mesh.local without the issuer's root CN=mesh-ca"},
			},
		},
		"no MeshTrust": {
			objs: append(healthyObjs, agentIdentity("demo", "mesh-ca"), meshTrust("demo", "elsewhere.example.com", healthy), mesh("demo", exclusive)),
			wants: map[string]want{
				group + "MeshTrust": {Fail, "no MeshTrust of mesh demo trusts trust domain " + td},
			},
		},
		"meshServices not Exclusive": {
			objs: append(healthyObjs, agentIdentity("demo", "mesh-ca"), meshTrust("demo", td, healthy), mesh("demo", `{}`)),
			wants: map[string]want{
				group + "meshServices": {Fail, `Mesh demo has spec.meshServices.mode "", not "Exclusive"`},
			},
		},
		"Mesh backend without its issuer": {
			objs: []client.Object{mesh("legacy", `{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"gone","kind":"ClusterIssuer","group":"cert-manager.io"}}}]}}`)},
			wants: map[string]want{
				"Mesh legacy, backend cm: issuer": {Fail, "ClusterIssuer gone not found"},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := &Report{}
			if err := newChecker(tc.objs...).Identities(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			assertResults(t, r, tc.wants)
		})
	}
}

func TestInstall(t *testing.T) {
	dp := func(ns, name string) *kuma.DataplaneResource {
		return &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "demo"}}, Mesh: "demo"}
	}
	pod := func(ns, name, node string, labels map[string]string, ready bool) *corev1.Pod {
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}, Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}}}
	}
	agentLabels := map[string]string{"app.kubernetes.io/name": "meshcert-agent"}
	daemonSet := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: "meshcert-agent", Labels: map[string]string{"app.kubernetes.io/component": "agent"}},
		Spec:       appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: agentLabels}},
	}
	agentRequest := func(name, reason string) *cmapi.CertificateRequest {
		return &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: name, Labels: map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue},
				Annotations: map[string]string{kuma.DataplaneAnnotation: "team/web"}},
			Status: cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
				{Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue, Reason: reason},
			}},
		}
	}
	tests := map[string]struct {
		objs  []client.Object
		wants map[string]want
	}{
		"nothing installed": {
			wants: map[string]want{
				"install: Kuma CRDs":           {Fail, "missing: meshes.kuma.io"},
				"install: cert-manager CRDs":   {Fail, "missing: certificaterequests.cert-manager.io"},
				"install: webhooks registered": {Fail, "not registered: defaults.meshes.meshcert.io"},
				"install: agents":              {Pass, "no workload has an identity that meshcert's agent serves"},
				"install: approval":            {Pass, "no approved agent request is kept"},
			},
		},
		"an agent on each node": {
			objs: []client.Object{agentIdentity("demo", "mesh-ca"), dp("team", "web"), pod("team", "web", "node-a", nil, true),
				daemonSet, pod(system, "agent-a", "node-a", agentLabels, true)},
			wants: map[string]want{
				"install: agents": {Pass, "a Ready agent on each of the 1 nodes"},
			},
		},
		"a node without a Ready agent": {
			objs: []client.Object{agentIdentity("demo", "mesh-ca"), dp("team", "web"), pod("team", "web", "node-a", nil, true),
				dp("team", "api"), pod("team", "api", "node-b", nil, true),
				daemonSet, pod(system, "agent-a", "node-a", agentLabels, true), pod(system, "agent-b", "node-b", agentLabels, false)},
			wants: map[string]want{
				"install: agents": {Fail, "no Ready agent on 1 of 2 nodes with workloads it serves: node-b (team/api)"},
			},
		},
		"no agent DaemonSet": {
			objs: []client.Object{agentIdentity("demo", "mesh-ca"), dp("team", "web"), pod("team", "web", "node-a", nil, true)},
			wants: map[string]want{
				"install: agents": {Fail, "no agent DaemonSet in namespace kong-mesh-system"},
			},
		},
		"approved by meshcert": {
			objs: []client.Object{agentRequest("a", "meshcert.io"), agentRequest("b", "meshcert.io")},
			wants: map[string]want{
				"install: approval": {Pass, "the last 2 agent requests approved were approved by meshcert"},
			},
		},
		"approved by cert-manager's default approver": {
			objs: []client.Object{agentRequest("a", "meshcert.io"), agentRequest("b", "cert-manager.io")},
			wants: map[string]want{
				"install: approval": {Fail, `of the last 2 agent requests approved, 1 by "cert-manager.io"`},
			},
		},
		"an ApprovedElsewhere Event": {
			objs: []client.Object{&corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: "e"}, Reason: approval.ApprovedElsewhereReason, Message: "Approved by \"policy.cert-manager.io\""}},
			wants: map[string]want{
				"install: approval": {Fail, "1 ApprovedElsewhere Events"},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := &Report{}
			if err := newChecker(tc.objs...).Install(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			assertResults(t, r, tc.wants)
		})
	}
}

func TestReport(t *testing.T) {
	tests := map[string]struct {
		statuses   []Status
		wantFailed bool
		wantLast   string
	}{
		"all pass":        {statuses: []Status{Pass, Pass}, wantLast: "OK: 2 passed, 0 warnings, 0 failed"},
		"warnings pass":   {statuses: []Status{Pass, Warn}, wantLast: "OK: 1 passed, 1 warnings, 0 failed"},
		"a failure fails": {statuses: []Status{Warn, Fail}, wantFailed: true, wantLast: "FAILED: 0 passed, 1 warnings, 1 failed"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := &Report{}
			for _, s := range tc.statuses {
				r.Results = append(r.Results, Result{Group: "g", Name: "n", Status: s, Reason: "r", Hint: "h"})
			}
			if r.Failed() != tc.wantFailed {
				t.Errorf("Failed() = %t, want %t", r.Failed(), tc.wantFailed)
			}
			var text, js bytes.Buffer
			if err := r.Write(&text, OutputText); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(text.String()), "\n")
			if last := lines[len(lines)-1]; last != tc.wantLast {
				t.Errorf("last line %q, want %q", last, tc.wantLast)
			}
			if err := r.Write(&js, OutputJSON); err != nil {
				t.Fatal(err)
			}
			var back Report
			if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Results) != len(tc.statuses) {
				t.Errorf("JSON %s does not read back: %v", js.String(), err)
			}
		})
	}
}
