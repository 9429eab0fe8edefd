package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/kuma"
)

// TestAgentRefusesForgedFacts attacks the node agent over its real socket,
// with the Kubernetes attestor against the test cluster, as an adversary on
// the node would: each forged fact is refused with PermissionDenied, each
// flood is bounded, and an identity taken away ends the stream that holds
// it. (The PID-reuse race is attested by internal/agent/attest's tests,
// where a test can fork and reap the process it needs.)
func TestAgentRefusesForgedFacts(t *testing.T) {
	ctx := context.Background()
	const ns = "agent-attacks"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	applyAgentIdentities(t)
	web := agentWorkload(t, ns, "web", agentNode, "agent-web", nil)
	claimer := agentWorkload(t, ns, "claimer", agentNode, "agent-web", nil)
	handWritten := agentWorkload(t, ns, "hand-written", agentNode, "agent-web", nil)
	patchDataplane(t, ns, "claimer", func(dp *kuma.DataplaneResource) { dp.Labels[kuma.NamespaceLabel] = "agent-pods" })
	patchDataplane(t, ns, "hand-written", func(dp *kuma.DataplaneResource) { dp.OwnerReferences = nil })
	proc := newFakeProc(t)
	socket := startAgent(t, config.AttestorKubernetes, proc.root)
	webID := "spiffe://agents.example.com/ns/" + ns + "/sa/web"

	// fetch asks for names on a stream of a new connection, and returns
	// the first response or the stream's error.
	fetch := func(t *testing.T, names ...string) (*discoveryv3.DiscoveryResponse, error) {
		t.Helper()
		fetchCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		stream, err := secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket)).StreamSecrets(fetchCtx)
		if err != nil {
			return nil, err
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: agent.SecretTypeURL, ResourceNames: names}); err != nil {
			_, err = stream.Recv()
			return nil, err
		}
		return stream.Recv()
	}

	refused := map[string]func(t *testing.T){
		"a host process in a cgroup it named after a pod": func(t *testing.T) {
			// A user's delegated subtree, as systemd gives one, holding a
			// cgroup named as the kubelet names web's container.
			line := "0::/user.slice/user-1000.slice/user@1000.service/kubepods-besteffort-pod" + strings.ReplaceAll(string(web.UID), "-", "_") +
				".slice/cri-containerd-" + fakeContainerID + ".scope\n"
			if err := os.WriteFile(filepath.Join(proc.dir, "cgroup"), []byte(line), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"a pod whose Dataplane claims another namespace": func(t *testing.T) { proc.inPod(t, string(claimer.UID)) },
		"a pod whose Dataplane it does not control":      func(t *testing.T) { proc.inPod(t, string(handWritten.UID)) },
	}
	for name, become := range refused {
		t.Run(name+" is refused", func(t *testing.T) {
			become(t)
			if _, err := fetch(t, webID); status.Code(err) != codes.PermissionDenied {
				t.Errorf("got %v, want PermissionDenied", err)
			}
		})
	}

	proc.inPod(t, string(web.UID))
	floods := map[string]struct {
		name  string
		times int
		want  codes.Code
	}{
		"names repeated within the cap are answered with one of each":             {name: "ALL", times: 60, want: codes.OK},
		"10,000 repeated names are refused by their count, before any work":       {name: "ALL", times: 10_000, want: codes.InvalidArgument},
		"10,000 repeated longer names are refused by their size, before any work": {name: "default", times: 10_000, want: codes.ResourceExhausted},
	}
	for name, tc := range floods {
		t.Run(name, func(t *testing.T) {
			names := make([]string, tc.times)
			for i := range names {
				names[i] = tc.name
			}
			resp, err := fetch(t, names...)
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
			if err == nil && len(resp.Resources) != 1 {
				t.Errorf("%d resources for one name asked %d times, want 1", len(resp.Resources), tc.times)
			}
		})
	}

	t.Run("a caller's calls are capped", func(t *testing.T) {
		const extra = 8
		client := secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket))
		holdCtx, release := context.WithCancel(ctx)
		defer release()
		total := 32 + extra // the agent's --max-calls-per-caller, and more
		outcomes := make(chan codes.Code, total)
		var held sync.WaitGroup
		for range total {
			held.Add(1)
			go func() {
				defer held.Done()
				stream, err := client.StreamSecrets(holdCtx)
				if err == nil {
					_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: agent.SecretTypeURL, ResourceNames: []string{webID}})
					_, err = stream.Recv()
				}
				outcomes <- status.Code(err)
			}()
		}
		got := map[codes.Code]int{}
		for range total {
			got[<-outcomes]++
		}
		release()
		held.Wait()
		if got[codes.OK] != 32 || got[codes.ResourceExhausted] != extra {
			t.Errorf("outcomes %v, want 32 served and %d ResourceExhausted", got, extra)
		}
	})

	t.Run("a deleted MeshIdentity ends the stream that holds its identity", func(t *testing.T) {
		streamCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		stream, err := secretv3.NewSecretDiscoveryServiceClient(dialAgent(t, socket)).StreamSecrets(streamCtx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: agent.SecretTypeURL, ResourceNames: []string{webID}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("the first response: %v", err)
		}
		mid := &kuma.MeshIdentityResource{}
		mid.Namespace, mid.Name = systemNamespace, "agent-web"
		if err := testEnv.cluster.Client.Delete(ctx, mid); err != nil {
			t.Fatal(err)
		}
		for {
			_, err := stream.Recv()
			if err == nil {
				continue // a renewal that was already on its way
			}
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("the stream ended with %v, want PermissionDenied", err)
			}
			break
		}
	})
}

// patchDataplane changes a Dataplane in the API server.
func patchDataplane(t *testing.T, ns, name string, mutate func(*kuma.DataplaneResource)) {
	t.Helper()
	dp := &kuma.DataplaneResource{}
	if err := testEnv.cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, dp); err != nil {
		t.Fatal(err)
	}
	mutate(dp)
	if err := testEnv.cluster.Client.Update(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
}
