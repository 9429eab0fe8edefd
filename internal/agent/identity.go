// Package agent is meshcert's node agent. On one Unix socket it serves each
// workload of its node its own identity, signed per workload by cert-manager
// through a CertificateRequest: to Envoy over the Secret Discovery Service,
// as SPIRE's agent does for Kuma's Spire identity provider, and to any SPIFFE
// client over the Workload API. Who a caller is comes from the kernel and
// the API server, never from what the caller asks for.
package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/defaults"
	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// Identity is what a caller is entitled to: one SPIFFE ID, of one
// MeshIdentity, and how to issue it.
type Identity struct {
	SpiffeID    string
	TrustDomain string
	Mesh        string
	// MeshIdentity is the identity's object, for Events.
	MeshIdentity types.NamespacedName
	// Dataplane is the caller's, which its request names for the approver.
	Dataplane types.NamespacedName
	// Workload is the Pod (or, for the unix attestor, the Dataplane) the
	// caller runs as, for Events.
	Workload     client.Object
	IssuerRef    cmmeta.IssuerReference
	Duration     time.Duration
	KeyAlgorithm issuance.KeyAlgorithm
}

// NotEntitled is why a caller gets no identity. It is the caller's
// situation, not the agent's failure.
type NotEntitled struct {
	Reason string
	// pending is a reason that may pass on its own: what the caller needs
	// has not appeared yet.
	pending bool
}

func (e *NotEntitled) Error() string { return e.Reason }

func notEntitled(format string, args ...any) error {
	return &NotEntitled{Reason: fmt.Sprintf(format, args...)}
}

func notYet(format string, args ...any) error {
	return &NotEntitled{Reason: fmt.Sprintf(format, args...), pending: true}
}

// Attestor finds the Dataplane a caller runs as.
type Attestor interface {
	// Dataplane returns the caller's Dataplane and the object to report
	// on: its Pod, or the Dataplane itself.
	Dataplane(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error)
}

// Resolver decides a caller's identity: its Dataplane, by the attestor, then
// the MeshIdentity Kuma gives it, when that is one meshcert serves.
type Resolver struct {
	Attestor Attestor
	// Cache holds the MeshIdentities of the system namespace.
	Cache           client.Reader
	SystemNamespace string
	Zone            string
	KeyAlgorithm    issuance.KeyAlgorithm
	Procfs          attest.Procfs
}

// Resolve returns the caller's identity, or a *NotEntitled.
func (r *Resolver) Resolve(ctx context.Context, c attest.Caller) (*Identity, error) {
	dp, workload, err := r.Attestor.Dataplane(ctx, c)
	if err != nil {
		return nil, err
	}
	var list kuma.MeshIdentityResourceList
	if err := r.Cache.List(ctx, &list, client.InNamespace(r.SystemNamespace)); err != nil {
		return nil, err
	}
	served, err := kuma.AgentIdentityOf(kuma.MeshIdentityPointers(list.Items), dp, r.Zone)
	if err != nil {
		return nil, notEntitled("%v", err)
	}
	mid := served.MeshIdentity
	conf, _ := mid.CertManagerConf()
	// The kernel said who connected; what was read since must still be
	// about that process, not one that took its PID.
	if err := r.Procfs.StillSame(c); err != nil {
		return nil, notEntitled("%v", err)
	}
	return &Identity{
		SpiffeID:     served.SpiffeID,
		TrustDomain:  served.TrustDomain,
		Mesh:         dp.MeshName(),
		MeshIdentity: types.NamespacedName{Namespace: mid.Namespace, Name: mid.Name},
		Dataplane:    types.NamespacedName{Namespace: dp.Namespace, Name: dp.Name},
		Workload:     workload,
		IssuerRef:    defaults.IssuerRef(conf.IssuerRef),
		Duration:     mid.Lifetime(),
		KeyAlgorithm: issuance.KeyAlgorithmFor(mid.Annotations, r.KeyAlgorithm),
	}, nil
}

// PodUIDIndex indexes the node's Pods by UID, which a caller's cgroup names.
const PodUIDIndex = "agent.pod-uid"

// IndexPodUIDs adds the index the PodAttestor reads through.
func IndexPodUIDs(ctx context.Context, indexer client.FieldIndexer) error {
	return indexer.IndexField(ctx, &corev1.Pod{}, PodUIDIndex, func(o client.Object) []string { return []string{string(o.GetUID())} })
}

// PodAttestor is the Kubernetes attestor: the caller's cgroup names its
// pod and container where the kubelet puts them; the pod must be a Pod of
// this node, and the container one of its current containers; the Dataplane
// of the Pod's namespace and name must be the Pod's: controlled by it, as
// Kuma's pod converter makes it, and naming the Pod's own namespace and
// service account.
type PodAttestor struct {
	Procfs attest.Procfs
	// Pods reads the Pods of this node only, from a cache limited to them
	// and indexed by IndexPodUIDs.
	Pods client.Reader
	// Dataplanes reads one Dataplane by name from the API server: an agent
	// never caches the cluster's Dataplanes.
	Dataplanes client.Reader
	// Wait is how long a pod, container or Dataplane that has not appeared
	// yet is looked for before the caller is refused.
	Wait time.Duration
}

// Dataplane implements Attestor. A workload often calls before the kubelet
// reports its container in the pod's status and before Kuma writes its
// Dataplane, so what has not appeared yet is looked for again, with backoff,
// for up to Wait; SPIRE's k8s workload attestor polls the kubelet likewise
// (max_poll_attempts, poll_retry_interval).
func (a *PodAttestor) Dataplane(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	deadline := time.Now().Add(a.Wait)
	delay := 100 * time.Millisecond
	for {
		dp, pod, err := a.attest(ctx, c)
		var ne *NotEntitled
		if !errors.As(err, &ne) || !ne.pending || time.Now().Add(delay).After(deadline) {
			return dp, pod, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, err
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

func (a *PodAttestor) attest(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	w, ok, err := a.Procfs.Workload(c)
	switch {
	case errors.Is(err, attest.ErrProcessGone):
		return nil, nil, notEntitled("%v", err)
	case err != nil:
		return nil, nil, notEntitled("process %d: %v", c.PID, err)
	case !ok:
		return nil, nil, notEntitled("process %d is not in a pod", c.PID)
	}
	var pods corev1.PodList
	if err := a.Pods.List(ctx, &pods, client.MatchingFields{PodUIDIndex: w.PodUID}); err != nil {
		return nil, nil, err
	}
	if len(pods.Items) != 1 {
		return nil, nil, notYet("process %d is in pod %s, which is not a pod of this node", c.PID, w.PodUID)
	}
	pod := &pods.Items[0]
	if !hasContainer(pod, w.ContainerID) {
		return nil, nil, notYet("process %d is in container %s, which is none of pod %s/%s's current containers", c.PID, w.ContainerID, pod.Namespace, pod.Name)
	}
	dp := &kuma.DataplaneResource{}
	err = a.Dataplanes.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, dp)
	if apierrors.IsNotFound(err) {
		return nil, nil, notYet("pod %s/%s has no Dataplane", pod.Namespace, pod.Name)
	}
	if err != nil {
		return nil, nil, err
	}
	if err := kuma.CheckOwnedByPod(dp, pod); err != nil {
		return nil, nil, notEntitled("%v", err)
	}
	return dp, pod, nil
}

// hasContainer tells whether id is one of the pod's current containers, as
// its status gives them (<runtime>://<id>): a sandbox, a container gone from
// the status, or another pod's is not.
func hasContainer(pod *corev1.Pod, id string) bool {
	for _, statuses := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, s := range statuses {
			if _, statusID, ok := strings.Cut(s.ContainerID, "://"); ok && statusID == id {
				return true
			}
		}
	}
	return false
}

// UnixAttestor, for VMs and a local run, matches the caller's Unix user to
// the Dataplane of the agent's node annotated with it. Its trust rests on
// who may write Dataplanes: whoever can annotate one chooses which user of
// that node gets its identity. It reads the Dataplanes from a cache indexed
// by IndexUnixUIDs: where this attestor runs, on VMs and a laptop,
// Dataplanes are few.
type UnixAttestor struct {
	Dataplanes client.Reader
	// Node is the agent's node: only Dataplanes annotated with it are its.
	Node string
}

// UnixUIDIndex indexes Dataplanes by their meshcert.io/node-name and
// meshcert.io/unix-uid annotations, as <node>/<uid>.
const UnixUIDIndex = "agent.unix-uid"

// IndexUnixUIDs adds the index the UnixAttestor reads through.
func IndexUnixUIDs(ctx context.Context, indexer client.FieldIndexer) error {
	return indexer.IndexField(ctx, &kuma.DataplaneResource{}, UnixUIDIndex, unixUIDKeys)
}

func unixUIDKeys(o client.Object) []string {
	node, onNode := o.GetAnnotations()[kuma.NodeNameAnnotation]
	uid, ok := o.GetAnnotations()[kuma.UnixUIDAnnotation]
	if !onNode || !ok {
		return nil
	}
	return []string{unixUIDKey(node, uid)}
}

func unixUIDKey(node, uid string) string { return node + "/" + uid }

// Dataplane implements Attestor.
func (a *UnixAttestor) Dataplane(ctx context.Context, c attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
	uid := strconv.FormatUint(uint64(c.UID), 10)
	var list kuma.DataplaneResourceList
	if err := a.Dataplanes.List(ctx, &list, client.MatchingFields{UnixUIDIndex: unixUIDKey(a.Node, uid)}); err != nil {
		return nil, nil, err
	}
	switch len(list.Items) {
	case 0:
		return nil, nil, notEntitled("no Dataplane is annotated %s: %q and %s: %q", kuma.UnixUIDAnnotation, uid, kuma.NodeNameAnnotation, a.Node)
	case 1:
		return &list.Items[0], &list.Items[0], nil
	}
	return nil, nil, notEntitled("%d Dataplanes are annotated %s: %q and %s: %q; a user must be one dataplane", len(list.Items), kuma.UnixUIDAnnotation, uid, kuma.NodeNameAnnotation, a.Node)
}
