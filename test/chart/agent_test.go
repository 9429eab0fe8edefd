package chart

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestAgentDaemonSet checks the node agent the chart renders with
// agent.enabled: one pod per node with the host's PID namespace and its
// socket folder, hardened otherwise; selectors apart from the Deployment's;
// and RBAC rule by rule, with no Secrets and list of Dataplanes only for the
// unix attestor.
func TestAgentDaemonSet(t *testing.T) {
	tests := map[string]struct {
		args            []string
		wantSocket      string
		listDataplanes  bool
		wantAttestorArg string
		wantCgroupRoot  string
	}{
		"defaults": {
			args: []string{"--set", "agent.enabled=true"}, wantSocket: "/run/meshcert/sockets/socket", wantAttestorArg: "--attestor=kubernetes",
			wantCgroupRoot: "/",
		},
		"unix attestor and another folder": {
			args:       []string{"--set", "agent.enabled=true", "--set", "agent.attestor=unix", "--set", "agent.socketDir=/var/run/ids"},
			wantSocket: "/var/run/ids/socket", listDataplanes: true, wantAttestorArg: "--attestor=unix", wantCgroupRoot: "/",
		},
		"a kubelet with its own cgroup root, as kind's": {
			args:       []string{"--set", "agent.enabled=true", "--set", "agent.kubeletCgroupRoot=/kubelet"},
			wantSocket: "/run/meshcert/sockets/socket", wantAttestorArg: "--attestor=kubernetes", wantCgroupRoot: "/kubelet",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := render(t, tc.args...)
			ds := one[appsv1.DaemonSet](t, m, "DaemonSet")
			pod := ds.Spec.Template.Spec
			c := pod.Containers[0]
			if !pod.HostPID || c.Args[0] != "agent" || !slices.Contains(c.Args, "--socket="+tc.wantSocket) || !slices.Contains(c.Args, tc.wantAttestorArg) {
				t.Errorf("hostPID %v, args %v", pod.HostPID, c.Args)
			}
			if !slices.Contains(c.Args, "--kubelet-cgroup-root="+tc.wantCgroupRoot) {
				t.Errorf("args %v, want --kubelet-cgroup-root=%s", c.Args, tc.wantCgroupRoot)
			}
			if len(c.Env) != 1 || c.Env[0].Name != "MESHCERT_NODE_NAME" || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
				t.Errorf("env %+v, want the node's name from the downward API", c.Env)
			}
			sc := c.SecurityContext
			if sc == nil || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
				t.Errorf("container security context %+v", sc)
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Error("the agent is privileged")
			}
			if len(pod.Volumes) != 1 || pod.Volumes[0].HostPath == nil || pod.Volumes[0].HostPath.Path+"/socket" != tc.wantSocket {
				t.Errorf("volumes %+v, want the socket folder alone", pod.Volumes)
			}
			if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.Resources.Limits.Memory().IsZero() {
				t.Error("no probes or no memory limit")
			}
			// The Deployment's selector must not take the agent's pods.
			d := one[appsv1.Deployment](t, m, "Deployment")
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			if sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
				t.Errorf("the Deployment's selector %v matches the agent's pods %v", d.Spec.Selector, ds.Spec.Template.Labels)
			}

			var rules []rbacv1.PolicyRule
			for _, r := range all[rbacv1.ClusterRole](t, m, "ClusterRole") {
				if strings.HasSuffix(r.Name, "-agent") {
					rules = append(rules, r.Rules...)
				}
			}
			for _, r := range all[rbacv1.Role](t, m, "Role") {
				if strings.HasSuffix(r.Name, "-agent") {
					rules = append(rules, r.Rules...)
				}
			}
			checkRules(t, "the agent's RBAC", rules)
			if grantsSecretRead(rules) || slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "secrets") }) {
				t.Error("the agent may touch Secrets")
			}
			// Only the unix attestor, for VMs, watches the Dataplanes.
			for _, verb := range []string{"list", "watch"} {
				may := slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool {
					return slices.Contains(r.Resources, "dataplanes") && slices.Contains(r.Verbs, verb)
				})
				if may != tc.listDataplanes {
					t.Errorf("the agent may %s Dataplanes: %v, want %v", verb, may, tc.listDataplanes)
				}
			}
		})
	}
	if m := render(t); slices.Contains(kinds(m), "DaemonSet") {
		t.Error("the agent is rendered by default")
	}
}
