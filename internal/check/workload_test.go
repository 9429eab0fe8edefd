package check

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/webhook"
)

func TestWorkload(t *testing.T) {
	const group = "workload team/web: "
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "web", UID: "uid-web"},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "web"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	dataplane := func(mesh string, labels map[string]string) *kuma.DataplaneResource {
		labels["k8s.kuma.io/namespace"] = "team"
		return &kuma.DataplaneResource{
			ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "web", Labels: labels,
				Annotations:     map[string]string{kuma.ServiceAccountLabel: "web"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "web", UID: "uid-web", Controller: ptrTo(true)}}},
			Mesh: mesh,
			Spec: []byte(`{"networking":{"inbound":[{"tags":{"kuma.io/service":"web"}}]}}`),
		}
	}
	warning := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: "w"}, Type: corev1.EventTypeWarning, Reason: "RootUnknown",
		Message: "cannot learn the issuer's root", InvolvedObject: corev1.ObjectReference{Kind: "MeshIdentity", Name: "demo"}}
	tests := map[string]struct {
		objs  []client.Object
		wants map[string]want
	}{
		"no such pod": {
			wants: map[string]want{group + "pod": {Fail, "pod team/web does not exist"}},
		},
		"not in the mesh": {
			objs: []client.Object{pod},
			wants: map[string]want{
				group + "pod":       {Pass, "runs on node node-a (Running)"},
				group + "Dataplane": {Fail, "no Dataplane team/web"},
				group + "events":    {Pass, "none"},
			},
		},
		"an agent identity, no agent": {
			objs: []client.Object{pod, dataplane("demo", map[string]string{"app": "demo"}), agentIdentity("demo", "mesh-ca"), warning},
			wants: map[string]want{
				group + "Dataplane":   {Pass, "Dataplane team/web of mesh demo, with tags kuma.io/service=web"},
				group + "identity":    {Pass, "MeshIdentity demo selects it: spiffe://demo.default.mesh.local/ns/team/sa/web"},
				group + "agent":       {Fail, "no agent DaemonSet in namespace kong-mesh-system"},
				group + "certificate": {Warn, "unknown: no request for spiffe://demo.default.mesh.local/ns/team/sa/web on node node-a is kept"},
				group + "events":      {Warn, "MeshIdentity Warning RootUnknown: cannot learn the issuer's root"},
			},
		},
		"no identity at all": {
			objs: []client.Object{pod, dataplane("demo", map[string]string{"app": "other"}), agentIdentity("demo", "mesh-ca"), mesh("demo", `{}`)},
			wants: map[string]want{
				group + "identity": {Fail, "no MeshIdentity selects it, and Mesh demo has no enabled certmanager backend"},
			},
		},
		"a Mesh backend, Secret not delivered": {
			objs: []client.Object{pod, dataplane("legacy", map[string]string{}),
				mesh("legacy", `{"mtls":{"enabledBackend":"cm","backends":[{"name":"cm","type":"certmanager","conf":{"issuerRef":{"name":"mesh-ca"}}}]}}`)},
			wants: map[string]want{
				group + "identity":    {Pass, "Mesh legacy's backend cm issues its certificate"},
				group + "certificate": {Fail, "no Secret team/web-mtls delivered yet"},
			},
		},
		"a Dataplane its pod does not control": {
			objs: []client.Object{pod, func() *kuma.DataplaneResource {
				d := dataplane("demo", map[string]string{"app": "demo"})
				d.OwnerReferences = nil
				return d
			}()},
			wants: map[string]want{group + "Dataplane": {Fail, "is not controlled by pod web"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := &Report{}
			if err := newChecker(tc.objs...).Workload(context.Background(), r, types.NamespacedName{Namespace: "team", Name: "web"}); err != nil {
				t.Fatal(err)
			}
			assertResults(t, r, tc.wants)
		})
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestWebhookCertificate serves TLS as a webhook URL would, and checks the
// served certificate against caBundles.
func TestWebhookCertificate(t *testing.T) {
	server := httptest.NewTLSServer(http.NotFoundHandler())
	defer server.Close()
	servedCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw})
	other, _ := caIssuer(t, "other", now.Add(time.Hour))
	registration := func(caBundle []byte) client.Object {
		url := server.URL + webhook.ValidatingPath
		c := webhook.ValidatingConfiguration(webhook.RegistrationOptions{Name: "meshcert", FailurePolicy: admissionregistrationv1.Fail,
			ClientConfig: func(string) admissionregistrationv1.WebhookClientConfig {
				return admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle}
			}})
		return c
	}
	tests := map[string]struct {
		caBundle []byte
		want     want
	}{
		"the caBundle verifies it": {caBundle: servedCA, want: want{Pass, "verifies for 127.0.0.1 against the caBundle"}},
		"another CA":               {caBundle: other.PEM, want: want{Fail, "does not verify it"}},
		"an empty caBundle":        {caBundle: nil, want: want{Fail, "holds no certificate"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := newChecker(registration(tc.caBundle))
			// The served certificate is checked at the real time.
			c.Clock = clock.RealClock{}
			r := &Report{}
			if err := c.webhooks(context.Background(), group{report: r, name: InstallGroup}); err != nil {
				t.Fatal(err)
			}
			assertResults(t, r, map[string]want{"install: webhook certificate": tc.want})
			if !strings.Contains(r.Results[0].Reason, "not registered: defaults.meshes.meshcert.io") {
				t.Errorf("the mutating webhooks are not reported missing: %+v", r.Results[0])
			}
		})
	}
}
