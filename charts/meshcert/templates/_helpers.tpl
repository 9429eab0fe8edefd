{{/* The chart's name. */}}
{{- define "meshcert.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, with the chart's unless it already holds it. */}}
{{- define "meshcert.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "meshcert.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshcert.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every object's labels: the chart's, then commonLabels, which cannot replace the chart's. */}}
{{- define "meshcert.labels" -}}
{{- $labels := include "meshcert.selectorLabels" . | fromYaml }}
{{- $_ := set $labels "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_") }}
{{- $_ := set $labels "app.kubernetes.io/version" .Chart.AppVersion }}
{{- $_ := set $labels "app.kubernetes.io/managed-by" .Release.Service }}
{{- toYaml (merge $labels .Values.commonLabels) }}
{{- end }}

{{/* A pod template's labels: .labels, which its selector matches, then .podLabels, then commonLabels;
neither replaces a label of .labels, so the selector always matches. */}}
{{- define "meshcert.podLabels" -}}
{{- toYaml (merge .labels .podLabels .root.Values.commonLabels) }}
{{- end }}

{{- define "meshcert.serviceAccountName" -}}
{{- default (include "meshcert.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "meshcert.systemNamespace" -}}
{{- default .Release.Namespace .Values.systemNamespace }}
{{- end }}

{{/* The reconciler runs only where it may write Secrets. */}}
{{- define "meshcert.reconcilerEnabled" -}}
{{- if and .Values.reconciler.enabled (or .Values.dataplaneNamespaces .Values.rbac.clusterWideSecrets) }}true{{ end }}
{{- end }}

{{- define "meshcert.webhookSecretName" -}}
{{- if eq .Values.webhook.certificate.source "secret" }}
{{- .Values.webhook.certificate.secretName }}
{{- else }}
{{- printf "%s-webhook-tls" (include "meshcert.fullname" .) }}
{{- end }}
{{- end }}

{{/* The image reference, as cert-manager's chart makes it: image.registry prefixes the repository,
and a digest pins it (with a tag too, the reference holds both, and the digest is what is pulled). */}}
{{- define "meshcert.image" -}}
{{- $image := .Values.image }}
{{- $repository := $image.repository }}
{{- with $image.registry }}
{{- $repository = printf "%s/%s" . $repository }}
{{- end }}
{{- if and $image.tag $image.digest }}
{{- printf "%s:%s@%s" $repository $image.tag $image.digest }}
{{- else if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The webhook registrations' client config: the Service, and either cainjector or a caBundle. */}}
{{- define "meshcert.webhookClientConfig" -}}
service:
  name: {{ include "meshcert.fullname" .root }}
  namespace: {{ .root.Release.Namespace }}
  path: {{ .path }}
  port: 443
{{- if eq .root.Values.webhook.certificate.source "secret" }}
caBundle: {{ .root.Values.webhook.certificate.caBundle }}
{{- end }}
{{- end }}

{{- define "meshcert.webhookAnnotations" -}}
{{- if eq .Values.webhook.certificate.source "cert-manager" -}}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "meshcert.fullname" . }}-webhook
{{- end }}
{{- end }}

{{/* The node agent's pods: a name of their own, so that no selector of the Deployment matches them. */}}
{{- define "meshcert.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "meshcert.name" . }}-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshcert.agentName" -}}
{{- printf "%s-agent" (include "meshcert.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
