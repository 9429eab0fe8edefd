package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/kuma"
)

const (
	webUID       = types.UID("2c48913c-b29f-11e7-9350-020968147796")
	webContainer = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
	initID       = "1111111111111111111111111111111111111111111111111111111111111111"
	ephemeralID  = "2222222222222222222222222222222222222222222222222222222222222222"
	sandboxID    = "3333333333333333333333333333333333333333333333333333333333333333"
)

// webPod is a Pod of the node, with service account web-sa, an app, init and
// ephemeral container, and the sandbox the runtime made for it.
func webPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-7d9f-abcde", UID: webUID, Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "web-sa", NodeName: "node-a"},
		Status: corev1.PodStatus{
			ContainerStatuses:          []corev1.ContainerStatus{{Name: "app", ContainerID: "containerd://" + webContainer}},
			InitContainerStatuses:      []corev1.ContainerStatus{{Name: "init", ContainerID: "containerd://" + initID}},
			EphemeralContainerStatuses: []corev1.ContainerStatus{{Name: "debug", ContainerID: "containerd://" + ephemeralID}},
		},
	}
}

// webDataplane is the Dataplane Kuma's pod converter makes for webPod, as
// its store keeps it (kumahq/kuma v2.14.3, pod_converter.go): controlled by
// the Pod, the service account and workload moved to annotations.
func webDataplane() *kuma.DataplaneResource {
	return &kuma.DataplaneResource{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "shop", Name: "web-7d9f-abcde",
			Labels:      map[string]string{"app": "web", kuma.NamespaceLabel: "shop", kuma.ZoneLabel: "zone-1", "kuma.io/mesh": "default"},
			Annotations: map[string]string{kuma.DisplayNameKey: "web-7d9f-abcde", kuma.ServiceAccountLabel: "web-sa", kuma.WorkloadLabel: "web-sa"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "web-7d9f-abcde", UID: webUID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
		},
		Mesh: "default",
	}
}

// TestPodAttestor: each case is an attack on the Kubernetes attestor, and
// what stops it; the first is the workload it must serve.
func TestPodAttestor(t *testing.T) {
	const uid, gid = 1337, 1337
	owners := func(refs ...metav1.OwnerReference) func(*corev1.Pod, *kuma.DataplaneResource) {
		return func(_ *corev1.Pod, dp *kuma.DataplaneResource) { dp.OwnerReferences = refs }
	}
	cgroupfs := func(uid types.UID, id string) string {
		return "0::/kubepods/besteffort/pod" + string(uid) + "/" + id + "\n"
	}
	tests := map[string]struct {
		cgroup string
		// status is the process's Uid: and Gid: lines, when not the caller's.
		status     string
		change     func(*corev1.Pod, *kuma.DataplaneResource)
		notEntitle string
	}{
		"a container of the pod, its Dataplane Kuma's": {},
		"an init container":                            {cgroup: cgroupfs(webUID, initID)},
		"an ephemeral container":                       {cgroup: cgroupfs(webUID, ephemeralID)},
		"the service account only as a label, before Kuma's webhook moves it": {change: func(_ *corev1.Pod, dp *kuma.DataplaneResource) {
			delete(dp.Annotations, kuma.ServiceAccountLabel)
			dp.Labels[kuma.ServiceAccountLabel] = "web-sa"
		}},

		"a host process in a cgroup named as the pod's, in a delegated subtree": {
			cgroup:     "0::/user.slice/user-1000.slice/user@1000.service/kubepods-pod" + strings.ReplaceAll(string(webUID), "-", "_") + ".slice/cri-containerd-" + webContainer + ".scope\n",
			notEntitle: "names a pod, but not where the kubelet puts a pod's containers",
		},
		"a process in the pod's cgroup, in no container": {
			cgroup:     "0::/kubepods/besteffort/pod" + string(webUID) + "\n",
			notEntitle: "is pod " + string(webUID) + "'s own cgroup, no container's",
		},
		"the pod's sandbox, no container of its status": {
			cgroup:     cgroupfs(webUID, sandboxID),
			notEntitle: "process 4242 is in container " + sandboxID + ", which is none of pod shop/web-7d9f-abcde's current containers",
		},
		"a container gone from the pod's status": {
			change:     func(pod *corev1.Pod, _ *kuma.DataplaneResource) { pod.Status.ContainerStatuses = nil },
			notEntitle: "which is none of pod shop/web-7d9f-abcde's current containers",
		},
		"a static pod": {
			cgroup:     "0::/kubepods/besteffort/pod6c1b3e9a24b5f0d7e8a9c3b2d1f04e57/" + webContainer + "\n",
			notEntitle: "a static pod gets no identity",
		},
		"the PID now another user's process": {
			status:     "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n",
			notEntitle: "process 4242 runs as uid 0 gid 0, but connected as uid 1337 gid 1337",
		},
		"a pod of another node": {
			cgroup:     cgroupfs("3d59913c-b29f-11e7-9350-020968147796", webContainer),
			notEntitle: "process 4242 is in pod 3d59913c-b29f-11e7-9350-020968147796, which is not a pod of this node",
		},
		"a Dataplane written by hand, with no owner": {
			change:     owners(),
			notEntitle: "Dataplane shop/web-7d9f-abcde is not controlled by pod web-7d9f-abcde (UID " + string(webUID) + ")",
		},
		"a Dataplane of an earlier Pod of the same name": {
			change:     owners(metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "web-7d9f-abcde", UID: "0ld00000-0000-0000-0000-000000000000", Controller: ptr.To(true)}),
			notEntitle: "is not controlled by pod web-7d9f-abcde",
		},
		"a Dataplane the Pod owns but does not control": {
			change:     owners(metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "web-7d9f-abcde", UID: webUID}),
			notEntitle: "is not controlled by pod web-7d9f-abcde",
		},
		"a Dataplane controlled by something else with the Pod's UID": {
			change:     owners(metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f", UID: webUID, Controller: ptr.To(true)}),
			notEntitle: "is not controlled by pod web-7d9f-abcde",
		},
		// Kuma's converter sets k8s.kuma.io/namespace only if the Pod's
		// labels lack it.
		"a pod that claims another namespace": {
			change:     func(_ *corev1.Pod, dp *kuma.DataplaneResource) { dp.Labels[kuma.NamespaceLabel] = "payments" },
			notEntitle: `Dataplane shop/web-7d9f-abcde names namespace "payments" (k8s.kuma.io/namespace), not its Pod's`,
		},
		"a Dataplane with no namespace": {
			change:     func(_ *corev1.Pod, dp *kuma.DataplaneResource) { delete(dp.Labels, kuma.NamespaceLabel) },
			notEntitle: `names namespace "" (k8s.kuma.io/namespace)`,
		},
		"a Dataplane that names another service account": {
			change: func(_ *corev1.Pod, dp *kuma.DataplaneResource) {
				dp.Annotations[kuma.ServiceAccountLabel] = "payments-sa"
			},
			notEntitle: `Dataplane shop/web-7d9f-abcde names service account "payments-sa" (k8s.kuma.io/service-account), not its Pod's "web-sa"`,
		},
		"another service account as a label, under Kuma's annotation": {
			change: func(_ *corev1.Pod, dp *kuma.DataplaneResource) {
				dp.Annotations[kuma.ServiceAccountLabel] = "payments-sa"
				dp.Labels[kuma.ServiceAccountLabel] = "web-sa"
			},
			notEntitle: `names service account "payments-sa"`,
		},
		"a Pod whose service account changed since": {
			change:     func(pod *corev1.Pod, _ *kuma.DataplaneResource) { pod.Spec.ServiceAccountName = "other" },
			notEntitle: `not its Pod's "other"`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod, dp := webPod(), webDataplane()
			if tc.change != nil {
				tc.change(pod, dp)
			}
			cgroup, status := tc.cgroup, tc.status
			if cgroup == "" {
				cgroup = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(string(webUID), "-", "_") +
					".slice/cri-containerd-" + webContainer + ".scope\n"
			}
			if status == "" {
				status = "Uid:\t1337\t1337\t1337\t1337\nGid:\t1337\t1337\t1337\t1337\n"
			}
			root, c := attestorFixture(t, cgroup, status, pod, dp)
			a := &PodAttestor{Procfs: attest.Procfs{Root: root}, Pods: c, Dataplanes: c}

			gotDP, workload, err := a.Dataplane(context.Background(), attest.Caller{PID: 4242, UID: uid, GID: gid})
			var ne *NotEntitled
			switch {
			case tc.notEntitle != "":
				if !errors.As(err, &ne) || !strings.Contains(ne.Reason, tc.notEntitle) {
					t.Errorf("err = %v, want NotEntitled with %q", err, tc.notEntitle)
				}
			case err != nil:
				t.Errorf("err = %v, want the pod's Dataplane", err)
			case gotDP.Name != dp.Name || workload.GetUID() != webUID:
				t.Errorf("got Dataplane %s and workload %s, want %s of pod %s", gotDP.Name, workload.GetUID(), dp.Name, webUID)
			}
		})
	}
}

// readHook is a reader that calls before on each read, with the number of
// reads so far, so that a test can make an object appear between two reads.
type readHook struct {
	client.Client
	reads  int
	before func(n int)
}

func (r *readHook) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	r.reads++
	r.before(r.reads)
	return r.Client.Get(ctx, key, obj, opts...)
}

func (r *readHook) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	r.reads++
	r.before(r.reads)
	return r.Client.List(ctx, list, opts...)
}

func TestPodAttestorWaitsForWhatHasNotAppeared(t *testing.T) {
	ctx := context.Background()
	tests := map[string]struct {
		wait time.Duration
		// setup changes the pod and Dataplane as they are at the first
		// read; appear, when set, is called at the read numbered appearAt.
		setup      func(pod *corev1.Pod, dp *kuma.DataplaneResource) (create []client.Object)
		appearAt   int
		appear     func(c client.Client)
		notEntitle string
		// wantReads is the reads the attestor made; 0: at least two.
		wantReads int
	}{
		"a Dataplane written while the caller waits": {
			wait:     10 * time.Second,
			setup:    func(pod *corev1.Pod, _ *kuma.DataplaneResource) []client.Object { return []client.Object{pod} },
			appearAt: 6, // the third attempt's Dataplane read
			appear: func(c client.Client) {
				if err := c.Create(ctx, webDataplane()); err != nil {
					t.Error(err)
				}
			},
			wantReads: 6,
		},
		"a container the kubelet reports while the caller waits": {
			wait: 10 * time.Second,
			setup: func(pod *corev1.Pod, dp *kuma.DataplaneResource) []client.Object {
				pod.Status.ContainerStatuses = nil
				return []client.Object{pod, dp}
			},
			appearAt: 2, // the second attempt's Pod read
			appear: func(c client.Client) {
				if err := c.Status().Update(ctx, webPod()); err != nil {
					t.Error(err)
				}
			},
			wantReads: 3,
		},
		"a Dataplane that never appears is refused when the wait ends": {
			wait:       300 * time.Millisecond,
			setup:      func(pod *corev1.Pod, _ *kuma.DataplaneResource) []client.Object { return []client.Object{pod} },
			notEntitle: "has no Dataplane",
		},
		"no wait: refused at the first look": {
			setup:      func(pod *corev1.Pod, _ *kuma.DataplaneResource) []client.Object { return []client.Object{pod} },
			notEntitle: "has no Dataplane",
			wantReads:  2,
		},
		"a hand-written Dataplane is refused at once, however long the wait": {
			wait: 10 * time.Second,
			setup: func(pod *corev1.Pod, dp *kuma.DataplaneResource) []client.Object {
				dp.OwnerReferences = nil
				return []client.Object{pod, dp}
			},
			notEntitle: "is not controlled by pod",
			wantReads:  2,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cgroup := "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(string(webUID), "-", "_") +
				".slice/cri-containerd-" + webContainer + ".scope\n"
			root, c := attestorFixture(t, cgroup, "Uid:\t1337\t1337\t1337\t1337\nGid:\t1337\t1337\t1337\t1337\n", tc.setup(webPod(), webDataplane())...)
			reader := &readHook{Client: c, before: func(n int) {
				if n == tc.appearAt && tc.appear != nil {
					tc.appear(c)
				}
			}}
			a := &PodAttestor{Procfs: attest.Procfs{Root: root}, Pods: reader, Dataplanes: reader, Wait: tc.wait}

			_, _, err := a.Dataplane(ctx, attest.Caller{PID: 4242, UID: 1337, GID: 1337})
			var ne *NotEntitled
			switch {
			case tc.notEntitle != "":
				if !errors.As(err, &ne) || !strings.Contains(ne.Reason, tc.notEntitle) {
					t.Errorf("err = %v, want NotEntitled with %q", err, tc.notEntitle)
				}
			case err != nil:
				t.Errorf("err = %v, want the Dataplane that appeared", err)
			}
			switch {
			case tc.wantReads == 0 && reader.reads < 4:
				t.Errorf("%d reads, want the attestor to have looked again", reader.reads)
			case tc.wantReads != 0 && reader.reads != tc.wantReads:
				t.Errorf("%d reads, want %d", reader.reads, tc.wantReads)
			}
		})
	}
}

// attestorFixture is a proc folder in which process 4242 has cgroup and
// status, and a client holding objects, its Pods indexed by UID.
func attestorFixture(t *testing.T, cgroup, status string, objects ...client.Object) (procRoot string, c client.WithWatch) {
	t.Helper()
	procRoot = t.TempDir()
	if err := os.MkdirAll(filepath.Join(procRoot, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	for file, content := range map[string]string{"cgroup": cgroup, "status": status} {
		if err := os.WriteFile(filepath.Join(procRoot, "4242", file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	scheme := runtime.NewScheme()
	if err := kuma.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c = fake.NewClientBuilder().WithScheme(scheme).WithObjects(objects...).
		WithIndex(&corev1.Pod{}, PodUIDIndex, func(o client.Object) []string { return []string{string(o.GetUID())} }).Build()
	return procRoot, c
}
