// Package harness holds what the end-to-end tests put around meshcert and
// cert-manager: an approval policy and an external issuer they control,
// approver-policy and trust-manager as users run them, and a TCP load
// balancer in front of webhook replicas.
package harness

import (
	"context"
	"sync"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cminformers "github.com/cert-manager/cert-manager/pkg/client/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
)

// Decision is an approval policy's answer for one CertificateRequest.
type Decision struct {
	Approve bool
	// Abstain leaves the request to another approver, such as approver-policy.
	Abstain bool
	Message string
}

// CertificateRequestHooks stand in for the parts of a cluster around
// cert-manager that tests need to control: an approval policy (as
// approver-policy decides, instead of cert-manager's approve-all default),
// and an external issuer.
type CertificateRequestHooks struct {
	// Policy decides every undecided request; nil leaves them undecided.
	Policy func(*cmapi.CertificateRequest) Decision
	// ExternalGroup is the issuerRef group the external signer serves. It
	// signs approved requests with ExternalCA and, like many external
	// issuers, sets no status.ca.
	ExternalGroup string
	ExternalCA    *testpki.CA

	mu     sync.Mutex
	client cmclient.Interface
}

// SetPolicy replaces the approval policy.
func (h *CertificateRequestHooks) SetPolicy(p func(*cmapi.CertificateRequest) Decision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Policy = p
}

func (h *CertificateRequestHooks) policy() func(*cmapi.CertificateRequest) Decision {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.Policy
}

// StartHooks runs the hooks against the cluster until ctx is done.
func StartHooks(ctx context.Context, c *localcluster.Cluster, h *CertificateRequestHooks) error {
	cs, err := cmclient.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	h.client = cs
	factory := cminformers.NewSharedInformerFactory(cs, 0)
	informer := factory.Certmanager().V1().CertificateRequests()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { enqueue(queue, o) },
		UpdateFunc: func(_, o any) { enqueue(queue, o) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for range 4 {
		go func() {
			for {
				key, quit := queue.Get()
				if quit {
					return
				}
				ns, name, _ := cache.SplitMetaNamespaceKey(key)
				cr, err := informer.Lister().CertificateRequests(ns).Get(name)
				if err == nil {
					err = h.handle(ctx, cr.DeepCopy())
				}
				if err != nil && ctx.Err() == nil {
					queue.AddRateLimited(key)
				} else {
					queue.Forget(key)
				}
				queue.Done(key)
			}
		}()
	}
	return nil
}

func enqueue(q workqueue.TypedRateLimitingInterface[string], o any) {
	if key, err := cache.MetaNamespaceKeyFunc(o); err == nil {
		q.Add(key)
	}
}

func (h *CertificateRequestHooks) handle(ctx context.Context, cr *cmapi.CertificateRequest) error {
	decided := apiutil.CertificateRequestIsApproved(cr) || apiutil.CertificateRequestIsDenied(cr)
	if policy := h.policy(); !decided && policy != nil {
		d := policy(cr)
		switch {
		case d.Abstain:
			return nil
		case d.Approve:
			apiutil.SetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "policy.test", d.Message)
		default:
			apiutil.SetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "policy.test", d.Message)
		}
		_, err := h.client.CertmanagerV1().CertificateRequests(cr.Namespace).UpdateStatus(ctx, cr, metav1.UpdateOptions{})
		return err
	}
	if h.ExternalGroup == "" || cr.Spec.IssuerRef.Group != h.ExternalGroup || !apiutil.CertificateRequestIsApproved(cr) ||
		apiutil.CertificateRequestReadyReason(cr) == cmapi.CertificateRequestReasonIssued {
		return nil
	}
	certPEM, err := h.ExternalCA.Sign(cr.Spec.Request, cr.Spec.Duration.Duration)
	if err != nil {
		apiutil.SetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonFailed, err.Error())
	} else {
		cr.Status.Certificate = certPEM
		apiutil.SetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued, "signed by the test's external issuer")
	}
	_, err = h.client.CertmanagerV1().CertificateRequests(cr.Namespace).UpdateStatus(ctx, cr, metav1.UpdateOptions{})
	return err
}
