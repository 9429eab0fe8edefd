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

{{- define "meshcert.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "meshcert.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
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

{{- define "meshcert.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
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
