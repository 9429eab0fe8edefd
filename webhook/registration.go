package webhook

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The webhooks' names, as kubectl shows them in "admission webhook NAME denied
// the request", and the paths they are served on.
const (
	DefaultingWebhookName = "defaults.meshes.meshcert.io"
	ValidatingWebhookName = "validation.meshes.meshcert.io"
	DefaultingPath        = "/mutate-kuma-io-v1alpha1-mesh"
	ValidatingPath        = "/validate-kuma-io-v1alpha1-mesh"
)

// RegistrationOptions are the knobs of the webhook configurations.
type RegistrationOptions struct {
	// Name of both configuration objects.
	Name string
	// ClientConfig returns how the API server reaches the given path.
	ClientConfig func(path string) admissionregistrationv1.WebhookClientConfig
	// FailurePolicy applies to both webhooks; Fail is safe since only Meshes
	// are matched, never pods.
	FailurePolicy  admissionregistrationv1.FailurePolicyType
	TimeoutSeconds int32
}

// meshRules matches CREATE and UPDATE of kuma.io/v1alpha1 meshes. DELETE is not
// matched: there is nothing to check on the way out.
func meshRules() []admissionregistrationv1.RuleWithOperations {
	scope := admissionregistrationv1.ClusterScope
	return []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
		Rule: admissionregistrationv1.Rule{
			APIGroups:   []string{"kuma.io"},
			APIVersions: []string{"v1alpha1"},
			Resources:   []string{"meshes"},
			Scope:       &scope,
		},
	}}
}

// MutatingConfiguration is the registration of the defaulting webhook. The Helm
// chart renders the same object; a test holds the two together.
func MutatingConfiguration(o RegistrationOptions) *admissionregistrationv1.MutatingWebhookConfiguration {
	sideEffects := admissionregistrationv1.SideEffectClassNone
	matchPolicy := admissionregistrationv1.Equivalent
	reinvocation := admissionregistrationv1.NeverReinvocationPolicy
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: o.Name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    DefaultingWebhookName,
			ClientConfig:            o.ClientConfig(DefaultingPath),
			Rules:                   meshRules(),
			FailurePolicy:           &o.FailurePolicy,
			MatchPolicy:             &matchPolicy,
			SideEffects:             &sideEffects,
			TimeoutSeconds:          &o.TimeoutSeconds,
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &reinvocation,
		}},
	}
}

// ValidatingConfiguration is the registration of the validating webhook.
func ValidatingConfiguration(o RegistrationOptions) *admissionregistrationv1.ValidatingWebhookConfiguration {
	sideEffects := admissionregistrationv1.SideEffectClassNone
	matchPolicy := admissionregistrationv1.Equivalent
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: o.Name},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    ValidatingWebhookName,
			ClientConfig:            o.ClientConfig(ValidatingPath),
			Rules:                   meshRules(),
			FailurePolicy:           &o.FailurePolicy,
			MatchPolicy:             &matchPolicy,
			SideEffects:             &sideEffects,
			TimeoutSeconds:          &o.TimeoutSeconds,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
}
