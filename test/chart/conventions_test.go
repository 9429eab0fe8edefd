package chart

import (
	"maps"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const digest = "sha256:0e072dddd1f7f8fc8909a2ca6f65e76c5f0d2fcfb8be47935ae3457e8bbceb20"

// everything turns on every optional part of the chart, so that a check over
// all its objects sees each template.
var everything = []string{
	"--set", "dataplaneNamespaces={team-a}", "--set", "agent.enabled=true", "--set", "kumaCRDs.install=true",
	"--set", "approverPolicy.enabled=true", "--set", "approverPolicy.issuers[0].name=ca",
	"--set", "networkPolicy.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
}

// TestConventions checks the values platform teams expect of a chart, named
// and behaving as in cert-manager's: the image's registry and digest,
// commonLabels, pod labels and annotations, topology spread, extraObjects,
// and CRDs kept on uninstall.
func TestConventions(t *testing.T) {
	tests := map[string]struct {
		args  []string
		check func(t *testing.T, m Manifests)
	}{
		"a digest pins the image": {
			args: []string{"--set", "image.digest=" + digest, "--set", "agent.enabled=true"},
			check: func(t *testing.T, m Manifests) {
				checkImages(t, m, "ghcr.io/meshcert/meshcert@"+digest)
			},
		},
		"a tag and a digest: both, the digest pulled": {
			args: []string{"--set", "image.tag=v9", "--set", "image.digest=" + digest, "--set", "agent.enabled=true"},
			check: func(t *testing.T, m Manifests) {
				checkImages(t, m, "ghcr.io/meshcert/meshcert:v9@"+digest)
			},
		},
		"the registry prefixes the repository": {
			args: []string{"--set", "image.registry=mirror.example.com:5000/hub", "--set", "image.repository=meshcert/meshcert",
				"--set", "image.tag=v9", "--set", "agent.enabled=true"},
			check: func(t *testing.T, m Manifests) {
				checkImages(t, m, "mirror.example.com:5000/hub/meshcert/meshcert:v9")
			},
		},
		"commonLabels on every object and pod, never on a selector": {
			args: append([]string{"--set", "commonLabels.team=mesh", "--set", "commonLabels.app\\.kubernetes\\.io/name=other"}, everything...),
			check: func(t *testing.T, m Manifests) {
				if len(m) < 30 {
					t.Fatalf("%d objects: the render lacks parts of the chart", len(m))
				}
				for _, u := range m {
					l := u.GetLabels()
					if l["team"] != "mesh" {
						t.Errorf("%s %s: labels %v lack the common label", u.GetKind(), u.GetName(), l)
					}
					if l["app.kubernetes.io/name"] != "meshcert" {
						t.Errorf("%s %s: a common label replaced the chart's name: %v", u.GetKind(), u.GetName(), l)
					}
				}
				d := one[appsv1.Deployment](t, m, "Deployment")
				ds := one[appsv1.DaemonSet](t, m, "DaemonSet")
				checkPodLabels(t, "Deployment", d.Spec.Template.Labels, d.Spec.Selector.MatchLabels, map[string]string{"team": "mesh"})
				checkPodLabels(t, "DaemonSet", ds.Spec.Template.Labels, ds.Spec.Selector.MatchLabels, map[string]string{"team": "mesh"})
			},
		},
		"podLabels and podAnnotations on the pods, not on the selectors": {
			args: []string{"--set", "agent.enabled=true", "--set", "podLabels.tier=control", "--set", "podAnnotations.scan=yes",
				"--set", "podLabels.app\\.kubernetes\\.io/instance=other", "--set", "commonLabels.tier=common",
				"--set", "agent.podLabels.tier=node", "--set", "agent.podAnnotations.scan=no"},
			check: func(t *testing.T, m Manifests) {
				d := one[appsv1.Deployment](t, m, "Deployment")
				ds := one[appsv1.DaemonSet](t, m, "DaemonSet")
				checkPodLabels(t, "Deployment", d.Spec.Template.Labels, d.Spec.Selector.MatchLabels, map[string]string{"tier": "control"})
				checkPodLabels(t, "DaemonSet", ds.Spec.Template.Labels, ds.Spec.Selector.MatchLabels, map[string]string{"tier": "node"})
				if d.Spec.Template.Annotations["scan"] != "yes" || ds.Spec.Template.Annotations["scan"] != "no" {
					t.Errorf("pod annotations %v and %v", d.Spec.Template.Annotations, ds.Spec.Template.Annotations)
				}
				if want := map[string]string{"app.kubernetes.io/name": "meshcert", "app.kubernetes.io/instance": "meshcert"}; !maps.Equal(d.Spec.Selector.MatchLabels, want) {
					t.Errorf("the Deployment selects %v, want %v", d.Spec.Selector.MatchLabels, want)
				}
			},
		},
		"topologySpreadConstraints on the controller": {
			args: []string{"--set", "topologySpreadConstraints[0].maxSkew=1", "--set", "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
				"--set", "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
				"--set", "topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=meshcert"},
			check: func(t *testing.T, m Manifests) {
				c := one[appsv1.Deployment](t, m, "Deployment").Spec.Template.Spec.TopologySpreadConstraints
				if len(c) != 1 || c[0].MaxSkew != 1 || c[0].TopologyKey != "topology.kubernetes.io/zone" ||
					c[0].WhenUnsatisfiable != corev1.DoNotSchedule || c[0].LabelSelector.MatchLabels["app.kubernetes.io/name"] != "meshcert" {
					t.Errorf("topologySpreadConstraints %+v", c)
				}
			},
		},
		"extraObjects rendered with tpl": {
			args: []string{"--set-json", `extraObjects=[` +
				`"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: '{{ include \"meshcert.fullname\" . }}-extra'\n  namespace: {{ .Release.Namespace }}\ndata:\n  replicas: '{{ .Values.replicaCount }}'",` +
				`"apiVersion: v1\nkind: Secret\nmetadata:\n  name: extra\n  namespace: {{ .Release.Namespace }}"]`},
			check: func(t *testing.T, m Manifests) {
				cm := one[corev1.ConfigMap](t, m, "ConfigMap")
				if cm.Name != "meshcert-extra" || cm.Namespace != Namespace || cm.Data["replicas"] != "2" {
					t.Errorf("ConfigMap %s/%s with %v, want the templates and values filled in", cm.Namespace, cm.Name, cm.Data)
				}
				if s := one[corev1.Secret](t, m, "Secret"); s.Name != "extra" {
					t.Errorf("Secret %s", s.Name)
				}
			},
		},
		"the CRDs outlive the release": {
			args: []string{"--set", "kumaCRDs.install=true"},
			check: func(t *testing.T, m Manifests) {
				checkCRDsKept(t, m, true)
			},
		},
		"the CRDs go with the release when asked": {
			args: []string{"--set", "kumaCRDs.install=true", "--set", "kumaCRDs.keep=false"},
			check: func(t *testing.T, m Manifests) {
				checkCRDsKept(t, m, false)
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.check(t, render(t, tc.args...))
		})
	}
}

// checkImages checks the image of the controller's and the agent's container.
func checkImages(t *testing.T, m Manifests, want string) {
	t.Helper()
	if got := one[appsv1.Deployment](t, m, "Deployment").Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("the controller's image is %q, want %q", got, want)
	}
	if got := one[appsv1.DaemonSet](t, m, "DaemonSet").Spec.Template.Spec.Containers[0].Image; got != want {
		t.Errorf("the agent's image is %q, want %q", got, want)
	}
}

// checkPodLabels checks that a pod template has the extra labels, that its
// selector still matches it, and that the selector has none of them.
func checkPodLabels(t *testing.T, what string, labels, selector, extra map[string]string) {
	t.Helper()
	for k, v := range extra {
		if labels[k] != v {
			t.Errorf("%s: pod labels %v, want %s=%s", what, labels, k, v)
		}
		if _, ok := selector[k]; ok {
			t.Errorf("%s: the selector %v holds %s, and a selector cannot change", what, selector, k)
		}
	}
	for k, v := range selector {
		if labels[k] != v {
			t.Errorf("%s: pod labels %v no longer match the selector's %s=%s", what, labels, k, v)
		}
	}
}

func checkCRDsKept(t *testing.T, m Manifests, keep bool) {
	t.Helper()
	crds := all[unstructured.Unstructured](t, m, "CustomResourceDefinition")
	if len(crds) != 4 {
		t.Fatalf("%d CRDs, want 4", len(crds))
	}
	for _, crd := range crds {
		if kept := crd.GetAnnotations()["helm.sh/resource-policy"] == "keep"; kept != keep {
			t.Errorf("CRD %s: annotations %v, want kept %v", crd.GetName(), crd.GetAnnotations(), keep)
		}
		if crd.GetLabels()["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("CRD %s: labels %v lack the chart's", crd.GetName(), crd.GetLabels())
		}
	}
}
