// Package controllertest is what the controllers' unit tests share: a fake
// API server, clock, event recorder and lookup index, as a controller sees
// them under the manager, and the responses cert-manager gives a
// CertificateRequest. It is imported only from _test.go files, never by
// shipped code.
package controllertest

import (
	"context"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache/informertest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/testpki"
)

const (
	SystemNamespace = "kong-mesh-system"
	RequestTimeout  = 10 * time.Second
	// FirstBackoff is the backoff after a first failure.
	FirstBackoff = 5 * time.Second
)

// Backoff is the controllers' backoff policy under test.
var Backoff = issuance.BackoffPolicy{Initial: FirstBackoff, Max: time.Minute}

// Env is a fake API server and a fake clock, with a lookup index fed by fake
// informers, as the manager's cache would feed it.
type Env struct {
	T        *testing.T
	Ctx      context.Context
	Client   client.Client
	Clock    *clocktesting.FakeClock
	Recorder *events.FakeRecorder
	Lookup   *lookup.Index
}

// indexer registers the indexes a controller reads through with a fake
// client's builder, as the manager's field indexer does with its cache.
type indexer struct{ b *fake.ClientBuilder }

func (i indexer) IndexField(_ context.Context, obj client.Object, field string, f client.IndexerFunc) error {
	i.b.WithIndex(obj, field, f)
	return nil
}

// NewEnv starts at now from objs; the Secrets and issuers among them are in
// the lookup index as well.
func NewEnv(t *testing.T, now time.Time, objs ...client.Object) *Env {
	t.Helper()
	ctx := context.Background()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, kuma.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	// CertificateRequests have their status subresource, as cert-manager's CRD gives them.
	b := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).WithStatusSubresource(&cmapi.CertificateRequest{})
	if err := issuance.IndexRequests(ctx, indexer{b}); err != nil {
		t.Fatal(err)
	}

	informers := &informertest.FakeInformers{Scheme: scheme}
	index, err := lookup.NewIndex(ctx, informers, SystemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		switch obj.(type) {
		case *corev1.Secret, *cmapi.Issuer:
			informer, err := informers.FakeInformerFor(ctx, obj)
			if err != nil {
				t.Fatal(err)
			}
			informer.Add(obj)
		}
	}
	return &Env{T: t, Ctx: ctx, Client: b.Build(), Clock: clocktesting.NewFakeClock(now), Recorder: events.NewFakeRecorder(100), Lookup: index}
}

// Requests are the CertificateRequests in the API server.
func (e *Env) Requests() []cmapi.CertificateRequest {
	e.T.Helper()
	var list cmapi.CertificateRequestList
	if err := e.Client.List(e.Ctx, &list); err != nil {
		e.T.Fatal(err)
	}
	return list.Items
}

// WantOwners reports an error unless the owners of the CertificateRequests,
// as their issuance.OwnerAnnotation names them, are want.
func (e *Env) WantOwners(want []string) {
	e.T.Helper()
	var owners []string
	for _, cr := range e.Requests() {
		owners = append(owners, cr.Annotations[issuance.OwnerAnnotation])
	}
	if diff := cmp.Diff(want, owners); diff != "" {
		e.T.Errorf("the requests' owners (-want +got):\n%s", diff)
	}
}

// WantEvents reports an error unless the Events recorded since the last
// call are want.
func (e *Env) WantEvents(want []string) {
	e.T.Helper()
	if diff := cmp.Diff(want, e.Events()); diff != "" {
		e.T.Errorf("Events (-want +got):\n%s", diff)
	}
}

// WantRequeue reports an error unless res requeues after want.
func (e *Env) WantRequeue(res ctrl.Result, want time.Duration) {
	e.T.Helper()
	if res.RequeueAfter != want {
		e.T.Errorf("RequeueAfter = %s, want %s", res.RequeueAfter, want)
	}
}

// A Response sets a request's status, as a signer or an approver would.
type Response func(*Env, *cmapi.CertificateRequest)

// Respond gives the only request the response f.
func (e *Env) Respond(f Response) {
	e.T.Helper()
	crs := e.Requests()
	if len(crs) != 1 {
		e.T.Fatalf("%d requests, want 1", len(crs))
	}
	f(e, &crs[0])
	if err := e.Client.Status().Update(e.Ctx, &crs[0]); err != nil {
		e.T.Fatal(err)
	}
}

// Events returns the Events recorded since the last call, each as its type
// and reason.
func (e *Env) Events() []string {
	var out []string
	for {
		select {
		case ev := <-e.Recorder.Events:
			typ, rest, _ := strings.Cut(ev, " ")
			reason, _, _ := strings.Cut(rest, " ")
			out = append(out, typ+" "+reason)
		default:
			return out
		}
	}
}

func condition(typ cmapi.CertificateRequestConditionType, status cmmeta.ConditionStatus, reason string) cmapi.CertificateRequestCondition {
	return cmapi.CertificateRequestCondition{Type: typ, Status: status, Reason: reason, Message: reason}
}

// SignedBy signs a request's CSR from ca, from the fake clock's now for
// lifetime, with status.ca set, as cert-manager's CA issuer does.
func SignedBy(ca testpki.CA, lifetime time.Duration) Response {
	return func(e *Env, cr *cmapi.CertificateRequest) {
		csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
		if err != nil {
			e.T.Fatal(err)
		}
		cr.Status.Certificate = ca.IssuePublic(e.T, csr.PublicKey, csr.URIs, e.Clock.Now().Add(-time.Minute), lifetime)
		cr.Status.CA = ca.PEM
		cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "Approved"), condition("Ready", "True", "Issued")}
	}
}

// Denied denies a request, as an approver does.
func Denied(_ *Env, cr *cmapi.CertificateRequest) {
	cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Denied", "True", "PolicyDenied"), condition("Ready", "False", "Denied")}
}

// Failed fails an approved request, as a signer does.
func Failed(_ *Env, cr *cmapi.CertificateRequest) {
	cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "Approved"), condition("Ready", "False", "Failed")}
}

// ReadyIssuer is a ready Issuer of the system namespace.
func ReadyIssuer(name string) *cmapi.Issuer {
	return &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: SystemNamespace, ResourceVersion: "1"},
		Status: cmapi.IssuerStatus{Conditions: []cmapi.IssuerCondition{{
			Type: cmapi.IssuerConditionReady, Status: cmmeta.ConditionTrue,
		}}},
	}
}
