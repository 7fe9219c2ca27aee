{{/* The chart's name. */}}
{{- define "migrator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources. */}}
{{- define "migrator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Job's name: a plain Job is named after the release revision, so an immutable Job
     is replaced, never patched. */}}
{{- define "migrator.jobName" -}}
{{- if .Values.job.hook }}
{{- include "migrator.fullname" . }}
{{- else }}
{{- printf "%s-%d" (include "migrator.fullname" . | trunc 52 | trimSuffix "-") (int .Release.Revision) }}
{{- end }}
{{- end }}

{{- define "migrator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "migrator.labels" -}}
helm.sh/chart: {{ include "migrator.chart" . }}
{{ include "migrator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: migrations
{{- end }}

{{- define "migrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "migrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "migrator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the password or URL: an existing one, or the chart's own. */}}
{{- define "migrator.secretName" -}}
{{- default (include "migrator.fullname" .) .Values.database.existingSecret.name }}
{{- end }}

{{/* Does the URL (rather than the parts) reach the container? */}}
{{- define "migrator.usesUrl" -}}
{{- if .Values.database.existingSecret.name }}
{{- if .Values.database.existingSecret.urlKey }}true{{ end }}
{{- else if .Values.database.url }}true{{ end }}
{{- end }}

{{/* Annotations that make a resource run before the Job: a Helm hook, an Argo CD PreSync
     hook, or nothing (a plain resource). `weight` is relative to the Job's. */}}
{{- define "migrator.hookAnnotations" -}}
{{- $root := index . 0 }}
{{- $offset := index . 1 }}
{{- $policy := index . 2 }}
{{- if $root.Values.job.hook }}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ add $root.Values.job.hookWeight $offset | quote }}
helm.sh/hook-delete-policy: {{ $policy }}
{{- else if $root.Values.job.argocd }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/sync-wave: {{ $offset | quote }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
{{- end }}
