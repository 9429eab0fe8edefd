package chart

// These tests check the Helm chart as data: what it renders for every
// documented option, its security settings, its RBAC, and that its webhook
// registrations are the binary's own. They need helm ($HELM, set by the
// Makefile), but no cluster; test/e2e applies the chart to one.

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/meshcert/meshcert/webhook"
)

func render(t *testing.T, args ...string) Manifests {
	t.Helper()
	m, err := Render(args...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// all returns the objects of a kind, converted to typed T.
func all[T any](t *testing.T, m Manifests, kind string) []*T {
	t.Helper()
	var out []*T
	for _, u := range m {
		if u.GetKind() != kind {
			continue
		}
		obj := new(T)
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, obj, true); err != nil {
			t.Fatalf("%s %s: %v", kind, u.GetName(), err)
		}
		out = append(out, obj)
	}
	return out
}

func one[T any](t *testing.T, m Manifests, kind string) *T {
	t.Helper()
	objs := all[T](t, m, kind)
	if len(objs) != 1 {
		t.Fatalf("%d objects of kind %s, want 1", len(objs), kind)
	}
	return objs[0]
}

func kinds(m Manifests) []string {
	var k []string
	for _, u := range m {
		k = append(k, u.GetKind())
	}
	return k
}

func TestLint(t *testing.T) {
	helm := os.Getenv("HELM")
	if helm == "" {
		t.Fatal("HELM is not set: run `make test`")
	}
	for _, args := range [][]string{nil, {"--set", "dataplaneNamespaces={team-a}"}} {
		out, err := exec.Command(helm, append([]string{"lint", "--strict", Dir()}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("helm lint %v: %v\n%s", args, err, out)
		}
	}
}

// TestEveryDocumentedOption renders each option of the chart README and
// checks what it changes.
func TestEveryDocumentedOption(t *testing.T) {
	tests := map[string]struct {
		args  []string
		check func(t *testing.T, m Manifests)
	}{
		"defaults": {check: func(t *testing.T, m Manifests) {
			d := one[appsv1.Deployment](t, m, "Deployment")
			if !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--enable-reconciler=false") {
				t.Error("without dataplaneNamespaces the reconciler must be off")
			}
			for _, k := range []string{"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Certificate", "Issuer",
				"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ClusterRole", "Role"} {
				if !slices.Contains(kinds(m), k) {
					t.Errorf("no %s", k)
				}
			}
		}},
		"dataplaneNamespaces": {args: []string{"--set", "dataplaneNamespaces={team-a,team-b}"}, check: func(t *testing.T, m Manifests) {
			d := one[appsv1.Deployment](t, m, "Deployment")
			if !slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--dataplane-namespaces=team-a,team-b") {
				t.Errorf("args %v", d.Spec.Template.Spec.Containers[0].Args)
			}
			var bound []string
			for _, rb := range all[rbacv1.RoleBinding](t, m, "RoleBinding") {
				if rb.RoleRef.Name == "meshcert-dataplane-secrets" {
					bound = append(bound, rb.Namespace)
				}
			}
			if !slices.Equal(bound, []string{"team-a", "team-b"}) {
				t.Errorf("dataplane Secret rights bound in %v, want team-a and team-b", bound)
			}
		}},
		"rbac.clusterWideSecrets": {args: []string{"--set", "rbac.clusterWideSecrets=true"}, check: func(t *testing.T, m Manifests) {
			if !slices.ContainsFunc(all[rbacv1.ClusterRoleBinding](t, m, "ClusterRoleBinding"), func(b *rbacv1.ClusterRoleBinding) bool {
				return b.RoleRef.Name == "meshcert-dataplane-secrets"
			}) {
				t.Error("no cluster-wide binding of the dataplane Secret rights")
			}
		}},
		"webhook certificate from a Secret": {
			args: []string{"--set", "webhook.certificate.source=secret", "--set", "webhook.certificate.secretName=my-tls", "--set", "webhook.certificate.caBundle=Q0E="},
			check: func(t *testing.T, m Manifests) {
				if slices.Contains(kinds(m), "Certificate") {
					t.Error("a Certificate is rendered though the Secret is given")
				}
				v := one[admissionregistrationv1.ValidatingWebhookConfiguration](t, m, "ValidatingWebhookConfiguration")
				if string(v.Webhooks[0].ClientConfig.CABundle) != "CA" || len(v.Annotations) != 0 {
					t.Errorf("caBundle %q, annotations %v", v.Webhooks[0].ClientConfig.CABundle, v.Annotations)
				}
				if d := one[appsv1.Deployment](t, m, "Deployment"); d.Spec.Template.Spec.Volumes[0].Secret.SecretName != "my-tls" {
					t.Error("the pod does not mount the given Secret")
				}
			},
		},
		"failurePolicy and timeout": {args: []string{"--set", "webhook.failurePolicy=Ignore", "--set", "webhook.timeoutSeconds=3"}, check: func(t *testing.T, m Manifests) {
			v := one[admissionregistrationv1.ValidatingWebhookConfiguration](t, m, "ValidatingWebhookConfiguration")
			if *v.Webhooks[0].FailurePolicy != admissionregistrationv1.Ignore || *v.Webhooks[0].TimeoutSeconds != 3 {
				t.Error("failurePolicy or timeoutSeconds not applied")
			}
		}},
		"networkPolicy": {args: []string{"--set", "networkPolicy.enabled=true", "--set", "networkPolicy.apiServerCIDRs={10.0.0.1/32}"}, check: func(t *testing.T, m Manifests) {
			if !slices.Contains(kinds(m), "NetworkPolicy") {
				t.Error("no NetworkPolicy")
			}
		}},
		"serviceMonitor": {args: []string{"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=prom"}, check: func(t *testing.T, m Manifests) {
			if !slices.Contains(kinds(m), "ServiceMonitor") {
				t.Error("no ServiceMonitor")
			}
		}},
		"kumaCRDs.install": {args: []string{"--set", "kumaCRDs.install=true"}, check: func(t *testing.T, m Manifests) {
			var crds []string
			for _, u := range m {
				if u.GetKind() == "CustomResourceDefinition" {
					crds = append(crds, u.GetName())
				}
			}
			if !slices.Equal(crds, []string{"dataplanes.kuma.io", "meshes.kuma.io", "meshidentities.kuma.io", "meshtrusts.kuma.io"}) {
				t.Errorf("CRDs %v", crds)
			}
		}},
		"one replica without leader election": {args: []string{"--set", "replicaCount=1", "--set", "leaderElection.enabled=false"}, check: func(t *testing.T, m Manifests) {
			if slices.Contains(kinds(m), "PodDisruptionBudget") {
				t.Error("a PodDisruptionBudget for one replica blocks every drain")
			}
			for _, r := range all[rbacv1.Role](t, m, "Role") {
				if strings.HasSuffix(r.Name, "leader-election") {
					t.Error("leader election rights without leader election")
				}
			}
		}},
		"priorityClassName, resources, scheduling": {
			args: []string{"--set", "priorityClassName=system-cluster-critical", "--set", "resources.limits.memory=128Mi",
				"--set", "nodeSelector.pool=infra", "--set", "tolerations[0].key=infra", "--set", "podAnnotations.a=b", "--set", "podLabels.team=mesh"},
			check: func(t *testing.T, m Manifests) {
				p := one[appsv1.Deployment](t, m, "Deployment").Spec.Template
				if p.Spec.PriorityClassName != "system-cluster-critical" || p.Spec.NodeSelector["pool"] != "infra" ||
					len(p.Spec.Tolerations) != 1 || p.Annotations["a"] != "b" || p.Labels["team"] != "mesh" ||
					p.Spec.Containers[0].Resources.Limits.Memory().String() != "128Mi" {
					t.Errorf("pod template %+v", p)
				}
			},
		},
		"reconciler settings": {
			args: []string{"--set", "dataplaneNamespaces={team-a}", "--set", "reconciler.keyAlgorithm=rsa-2048", "--set", "reconciler.workers=4", "--set", "reconciler.maxRequestsInFlight=0",
				"--set", "reconciler.keepRequests=true", "--set", "systemNamespace=kuma-system", "--set", "extraArgs={--kube-api-qps=50}"},
			check: func(t *testing.T, m Manifests) {
				args := one[appsv1.Deployment](t, m, "Deployment").Spec.Template.Spec.Containers[0].Args
				for _, want := range []string{"--key-algorithm=rsa-2048", "--workers=4", "--max-requests-in-flight=0", "--keep-requests=true", "--system-namespace=kuma-system", "--kube-api-qps=50"} {
					if !slices.Contains(args, want) {
						t.Errorf("args %v lack %s", args, want)
					}
				}
				for _, r := range all[rbacv1.Role](t, m, "Role") {
					if r.Name == "meshcert" && r.Namespace != "kuma-system" {
						t.Errorf("system namespace rights in %s", r.Namespace)
					}
				}
			},
		},
		"reconciler.certificateRequestAnnotations": {
			args: []string{"--set", "dataplaneNamespaces={team-a}", "--set", "reconciler.certificateRequestAnnotations.policy\\.example\\.com/team=payments",
				"--set", "reconciler.certificateRequestAnnotations.tier=gold"},
			check: func(t *testing.T, m Manifests) {
				args := one[appsv1.Deployment](t, m, "Deployment").Spec.Template.Spec.Containers[0].Args
				if !slices.Contains(args, "--certificate-request-annotations=policy.example.com/team=payments,tier=gold") {
					t.Errorf("args %v lack the request annotations", args)
				}
			},
		},
		"reconciler.publishTrustBundles": {
			args: []string{"--set", "dataplaneNamespaces={team-a}", "--set", "reconciler.publishTrustBundles=true"},
			check: func(t *testing.T, m Manifests) {
				args := one[appsv1.Deployment](t, m, "Deployment").Spec.Template.Spec.Containers[0].Args
				if !slices.Contains(args, "--publish-trust-bundles=true") {
					t.Errorf("args %v", args)
				}
				if !slices.ContainsFunc(all[rbacv1.Role](t, m, "Role"), func(r *rbacv1.Role) bool {
					return slices.ContainsFunc(r.Rules, func(rule rbacv1.PolicyRule) bool { return slices.Contains(rule.Resources, "configmaps") })
				}) {
					t.Error("no Role may write the published ConfigMaps")
				}
			},
		},
		"serviceAccount and image": {
			args: []string{"--set", "serviceAccount.name=mc", "--set", "image.tag=v9", "--set", "imagePullSecrets[0].name=regcred"},
			check: func(t *testing.T, m Manifests) {
				p := one[appsv1.Deployment](t, m, "Deployment").Spec.Template.Spec
				if p.ServiceAccountName != "mc" || p.Containers[0].Image != "ghcr.io/meshcert/meshcert:v9" || p.ImagePullSecrets[0].Name != "regcred" {
					t.Errorf("pod spec %+v", p)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.check(t, render(t, tc.args...))
		})
	}
}

// TestPodIsHardened checks the pod of the default render.
func TestPodIsHardened(t *testing.T) {
	m := render(t)
	d := one[appsv1.Deployment](t, m, "Deployment")
	pod := d.Spec.Template.Spec
	if *d.Spec.Replicas != 2 {
		t.Errorf("%d replicas, want 2", *d.Spec.Replicas)
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || *psc.RunAsUser != 65532 || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v", psc)
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container security context %+v", sc)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Error("probes are not wired to /readyz and /healthz")
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds < 5 {
		t.Error("no preStop sleep to let the API server stop calling a terminating pod")
	}
	if *pod.TerminationGracePeriodSeconds <= c.Lifecycle.PreStop.Sleep.Seconds {
		t.Error("the grace period does not outlast the preStop sleep")
	}
	if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil || len(pod.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("no preferred anti-affinity")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("no resources")
	}
	if !slices.Contains(c.Args, "--leader-elect=true") {
		t.Error("leader election is off")
	}
	if pdb := one[unstructured.Unstructured](t, m, "PodDisruptionBudget"); pdb == nil {
		t.Error("no PodDisruptionBudget")
	}
}

// TestRBACIsLeastPrivilege checks, for the default render and for one with
// dataplane namespaces, that no rule is a wildcard and that Secrets are never
// readable cluster-wide.
func TestRBACIsLeastPrivilege(t *testing.T) {
	for name, args := range map[string][]string{
		"defaults":            nil,
		"dataplaneNamespaces": {"--set", "dataplaneNamespaces={team-a}"},
	} {
		t.Run(name, func(t *testing.T) {
			m := render(t, args...)
			clusterRoles := map[string]*rbacv1.ClusterRole{}
			for _, cr := range all[rbacv1.ClusterRole](t, m, "ClusterRole") {
				clusterRoles[cr.Name] = cr
				checkRules(t, "ClusterRole "+cr.Name, cr.Rules)
			}
			for _, r := range all[rbacv1.Role](t, m, "Role") {
				checkRules(t, "Role "+r.Name, r.Rules)
				if grantsSecretRead(r.Rules) && r.Namespace != Namespace {
					t.Errorf("Role %s reads Secrets in %s", r.Name, r.Namespace)
				}
			}
			for _, b := range all[rbacv1.ClusterRoleBinding](t, m, "ClusterRoleBinding") {
				if cr := clusterRoles[b.RoleRef.Name]; cr != nil && grantsSecretRead(cr.Rules) {
					t.Errorf("ClusterRoleBinding %s grants cluster-wide Secret reads", b.Name)
				}
			}
			for _, b := range all[rbacv1.RoleBinding](t, m, "RoleBinding") {
				if cr := clusterRoles[b.RoleRef.Name]; b.RoleRef.Kind == "ClusterRole" && cr != nil && grantsSecretRead(cr.Rules) &&
					!slices.Contains([]string{"team-a"}, b.Namespace) {
					t.Errorf("RoleBinding %s grants Secret reads in %s, which is not a dataplane namespace", b.Name, b.Namespace)
				}
			}
		})
	}
}

func checkRules(t *testing.T, what string, rules []rbacv1.PolicyRule) {
	t.Helper()
	for _, r := range rules {
		for _, list := range [][]string{r.Verbs, r.Resources, r.APIGroups} {
			if slices.Contains(list, "*") {
				t.Errorf("%s has a wildcard rule: %+v", what, r)
			}
		}
	}
}

func grantsSecretRead(rules []rbacv1.PolicyRule) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, "") && slices.Contains(r.Resources, "secrets") &&
			slices.ContainsFunc(r.Verbs, func(v string) bool { return v == "get" || v == "list" || v == "watch" }) {
			return true
		}
	}
	return false
}

// TestWebhooksAreTheBinarys checks that the chart registers exactly the
// webhooks the binary serves, at its Service.
func TestWebhooksAreTheBinarys(t *testing.T) {
	m := render(t)
	want := webhook.RegistrationOptions{
		Name:           "meshcert",
		FailurePolicy:  admissionregistrationv1.Fail,
		TimeoutSeconds: 5,
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			port := int32(443)
			return admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
				Namespace: Namespace, Name: "meshcert", Path: &path, Port: &port,
			}}
		},
	}
	mutating := one[admissionregistrationv1.MutatingWebhookConfiguration](t, m, "MutatingWebhookConfiguration")
	validating := one[admissionregistrationv1.ValidatingWebhookConfiguration](t, m, "ValidatingWebhookConfiguration")
	if got, w := mutating.Webhooks, webhook.MutatingConfiguration(want).Webhooks; !equalJSON(t, got, w) {
		t.Errorf("mutating webhooks differ from the binary's:\nchart:  %+v\nbinary: %+v", got, w)
	}
	if got, w := validating.Webhooks, webhook.ValidatingConfiguration(want).Webhooks; !equalJSON(t, got, w) {
		t.Errorf("validating webhooks differ from the binary's:\nchart:  %+v\nbinary: %+v", got, w)
	}

	svc := one[corev1.Service](t, m, "Service")
	d := one[appsv1.Deployment](t, m, "Deployment")
	c := d.Spec.Template.Spec.Containers[0]
	if svc.Name != "meshcert" || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.StrVal != "webhook" ||
		!slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "webhook" && p.ContainerPort == 9443 }) ||
		!slices.Contains(c.Args, "--webhook-port=9443") {
		t.Errorf("the Service does not lead to the webhook port: %+v / %+v", svc.Spec.Ports, c.Ports)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("the Service does not select the pods (%s=%s)", k, v)
		}
	}
	cert := one[unstructured.Unstructured](t, m, "Certificate")
	for _, cfg := range []map[string]string{mutating.Annotations, validating.Annotations} {
		if cfg["cert-manager.io/inject-ca-from"] != Namespace+"/"+cert.GetName() {
			t.Errorf("inject-ca-from %q, want %s/%s", cfg["cert-manager.io/inject-ca-from"], Namespace, cert.GetName())
		}
	}
	dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	if !slices.Contains(dns, "meshcert."+Namespace+".svc") {
		t.Errorf("the serving certificate's names %v lack the Service", dns)
	}
	secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	if d.Spec.Template.Spec.Volumes[0].Secret.SecretName != secretName {
		t.Error("the pod does not mount the serving certificate's Secret")
	}
}

// TestSchemaRejectsMistakes: a mistyped value fails helm with a message that
// names it.
func TestSchemaRejectsMistakes(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"string for a number":      {args: []string{"--set", "replicaCount=two"}, want: "/replicaCount': got string, want integer"},
		"misspelled key":           {args: []string{"--set", "replicas=3"}, want: "additional properties 'replicas' not allowed"},
		"unknown failurePolicy":    {args: []string{"--set", "webhook.failurePolicy=fail"}, want: "/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"},
		"timeout over 30s":         {args: []string{"--set", "webhook.timeoutSeconds=60"}, want: "/webhook/timeoutSeconds'"},
		"bad namespace":            {args: []string{"--set", "dataplaneNamespaces={Team_A}"}, want: "/dataplaneNamespaces/0'"},
		"bad duration":             {args: []string{"--set", "reconciler.requestTimeout=10 seconds"}, want: "/reconciler/requestTimeout'"},
		"secret without caBundle":  {args: []string{"--set", "webhook.certificate.source=secret", "--set", "webhook.certificate.secretName=x"}, want: "/webhook/certificate/caBundle'"},
		"grace period too short":   {args: []string{"--set", "terminationGracePeriodSeconds=5"}, want: "terminationGracePeriodSeconds must be longer than preStopSleepSeconds"},
		"a policy for no issuer":   {args: []string{"--set", "approverPolicy.enabled=true"}, want: "approverPolicy.issuers: name at least one issuer that meshcert's requests may use"},
		"a policy's unknown key":   {args: []string{"--set", "approverPolicy.keyAlgorithms={dsa}"}, want: "/approverPolicy/keyAlgorithms/0'"},
		"an issuer without name":   {args: []string{"--set", "approverPolicy.issuers[0].kind=Issuer"}, want: "/approverPolicy/issuers/0'"},
		"a tag for a digest":       {args: []string{"--set", "image.digest=v1.2.3"}, want: "/image/digest'"},
		"an object for a template": {args: []string{"--set", "extraObjects[0].kind=ConfigMap"}, want: "/extraObjects/0'"},
		"a common label not text":  {args: []string{"--set-json", `commonLabels={"team":{"name":"mesh"}}`}, want: "/commonLabels/team'"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Render(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestValuesAreDocumented: every value documented in values.yaml has its row
// in the chart's README.
func TestValuesAreDocumented(t *testing.T) {
	values, err := os.ReadFile(Dir() + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(Dir() + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	var path []string
	documented := false
	key := regexp.MustCompile(`^(\s*)([A-Za-z0-9]+):`)
	for _, line := range strings.Split(string(values), "\n") {
		if strings.Contains(line, "# -- ") {
			documented = true
			continue
		}
		m := key.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		path = append(path[:len(m[1])/2], m[2])
		if documented && !strings.Contains(string(readme), "| `"+strings.Join(path, ".")+"` |") {
			t.Errorf("value %s is not in the chart README's table", strings.Join(path, "."))
		}
		documented = false
	}
}
