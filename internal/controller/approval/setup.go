package approval

import (
	"context"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/meshcert/meshcert/internal/kuma"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

// SetupWithManager registers the approver: it watches the requests of the
// system namespace that meshcert's informer holds, and decides those of the
// agent's ServiceAccount.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, workers int) error {
	// The MeshIdentities it reads, whichever other part of meshcert runs.
	if _, err := mgr.GetCache().GetInformer(ctx, &kuma.MeshIdentityResource{}); err != nil {
		return fmt.Errorf("watching MeshIdentities: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("agent-approval").
		// Each decision waits on two reads and a write: a burst of new
		// workloads must not queue behind one worker.
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		For(&cmapi.CertificateRequest{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == r.SystemNamespace && o.(*cmapi.CertificateRequest).Spec.Username == r.AgentUser
		}))).
		Complete(r)
}
