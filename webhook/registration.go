package webhook

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The webhooks' names, as kubectl shows them in "admission webhook NAME denied
// the request", and the paths they are served on.
const (
	DefaultingWebhookName             = "defaults.meshes.meshcert.io"
	ValidatingWebhookName             = "validation.meshes.meshcert.io"
	DefaultingPath                    = "/mutate-kuma-io-v1alpha1-mesh"
	ValidatingPath                    = "/validate-kuma-io-v1alpha1-mesh"
	MeshIdentityDefaultingWebhookName = "defaults.meshidentities.meshcert.io"
	MeshIdentityValidatingWebhookName = "validation.meshidentities.meshcert.io"
	MeshIdentityDefaultingPath        = "/mutate-kuma-io-v1alpha1-meshidentity"
	MeshIdentityValidatingPath        = "/validate-kuma-io-v1alpha1-meshidentity"
)

// RegistrationOptions are the knobs of the webhook configurations.
type RegistrationOptions struct {
	// Name of both configuration objects.
	Name string
	// ClientConfig returns how the API server reaches the given path.
	ClientConfig func(path string) admissionregistrationv1.WebhookClientConfig
	// FailurePolicy applies to every webhook; Fail is safe since only Meshes
	// and MeshIdentities are matched, never pods.
	FailurePolicy  admissionregistrationv1.FailurePolicyType
	TimeoutSeconds int32
}

// rules matches CREATE and UPDATE of a kuma.io/v1alpha1 resource. DELETE is
// not matched: there is nothing to check on the way out.
func rules(resource string, scope admissionregistrationv1.ScopeType) []admissionregistrationv1.RuleWithOperations {
	return []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
		Rule: admissionregistrationv1.Rule{
			APIGroups:   []string{"kuma.io"},
			APIVersions: []string{"v1alpha1"},
			Resources:   []string{resource},
			Scope:       &scope,
		},
	}}
}

// webhookTargets are the resources meshcert admits: Meshes, and MeshIdentities
// in every namespace, since one outside the system namespace is rejected.
var webhookTargets = []struct {
	defaultingName, validatingName string
	defaultingPath, validatingPath string
	rules                          []admissionregistrationv1.RuleWithOperations
}{
	{DefaultingWebhookName, ValidatingWebhookName, DefaultingPath, ValidatingPath, rules("meshes", admissionregistrationv1.ClusterScope)},
	{MeshIdentityDefaultingWebhookName, MeshIdentityValidatingWebhookName, MeshIdentityDefaultingPath, MeshIdentityValidatingPath,
		rules("meshidentities", admissionregistrationv1.NamespacedScope)},
}

// webhook is one validating webhook as meshcert registers every one of its
// webhooks; MutatingConfiguration copies it into the mutating type.
func (o RegistrationOptions) webhook(name, path string, rules []admissionregistrationv1.RuleWithOperations) admissionregistrationv1.ValidatingWebhook {
	sideEffects := admissionregistrationv1.SideEffectClassNone
	matchPolicy := admissionregistrationv1.Equivalent
	return admissionregistrationv1.ValidatingWebhook{
		Name:                    name,
		ClientConfig:            o.ClientConfig(path),
		Rules:                   rules,
		FailurePolicy:           &o.FailurePolicy,
		MatchPolicy:             &matchPolicy,
		SideEffects:             &sideEffects,
		TimeoutSeconds:          &o.TimeoutSeconds,
		AdmissionReviewVersions: []string{"v1"},
	}
}

// MutatingConfiguration is the registration of the defaulting webhooks. The
// Helm chart renders the same object; a test holds the two together.
func MutatingConfiguration(o RegistrationOptions) *admissionregistrationv1.MutatingWebhookConfiguration {
	reinvocation := admissionregistrationv1.NeverReinvocationPolicy
	c := &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: o.Name},
	}
	for _, t := range webhookTargets {
		w := o.webhook(t.defaultingName, t.defaultingPath, t.rules)
		c.Webhooks = append(c.Webhooks, admissionregistrationv1.MutatingWebhook{
			Name: w.Name, ClientConfig: w.ClientConfig, Rules: w.Rules, FailurePolicy: w.FailurePolicy, MatchPolicy: w.MatchPolicy,
			SideEffects: w.SideEffects, TimeoutSeconds: w.TimeoutSeconds, AdmissionReviewVersions: w.AdmissionReviewVersions,
			ReinvocationPolicy: &reinvocation,
		})
	}
	return c
}

// ValidatingConfiguration is the registration of the validating webhooks.
func ValidatingConfiguration(o RegistrationOptions) *admissionregistrationv1.ValidatingWebhookConfiguration {
	c := &admissionregistrationv1.ValidatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: o.Name},
	}
	for _, t := range webhookTargets {
		c.Webhooks = append(c.Webhooks, o.webhook(t.validatingName, t.validatingPath, t.rules))
	}
	return c
}
