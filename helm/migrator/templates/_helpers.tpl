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

{{/* The Job's name; argument (list root phase), phase "" (migrator.phases off), "pre" or
     "post". A hook Job is replaced by Helm on every release (before-hook-creation).
     A plain Job is named after what it runs, a short hash of its rendered spec (image and pod
     spec included): a release that changes it brings a new Job, one that does not leaves the
     old Job alone, and a Job, immutable, is never patched. Release.Revision would not do:
     `helm template` (Argo CD) always renders revision 1. The post phase's Job has -post
     after the release's name; the pre phase's keeps the single Job's name. */}}
{{- define "migrator.jobName" -}}
{{- $root := index . 0 }}
{{- $suffix := ternary "-post" "" (eq (index . 1) "post") }}
{{- if $root.Values.job.hook }}
{{- printf "%s%s" (include "migrator.fullname" $root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-") $suffix }}
{{- else }}
{{- printf "%s%s-%s" (include "migrator.fullname" $root | trunc (int (sub 54 (len $suffix))) | trimSuffix "-") $suffix (include "migrator.jobSpec" . | sha256sum | trunc 8) }}
{{- end }}
{{- end }}

{{/* A tenant fleet's Job name; argument (list root mode phase), mode "canary" or "shard",
     phase "", "pre" or "post". Named like the single Job: the release's name plus -canary or
     -fleet (then -post for the post phase) as a hook, and a hash of the spec as a plain Job. */}}
{{- define "migrator.fleetJobName" -}}
{{- $root := index . 0 }}
{{- $mode := index . 1 }}
{{- $post := ternary "-post" "" (eq (index . 2) "post") }}
{{- $suffix := printf "%s%s" (ternary "canary" "fleet" (eq $mode "canary")) $post }}
{{- if $root.Values.job.hook }}
{{- printf "%s-%s" (include "migrator.fullname" $root | trunc (int (sub 56 (len $post))) | trimSuffix "-") $suffix }}
{{- else }}
{{- printf "%s-%s-%s" (include "migrator.fullname" $root | trunc (int (sub 47 (len $post))) | trimSuffix "-") $suffix (include "migrator.fleetJobSpec" . | sha256sum | trunc 8) }}
{{- end }}
{{- end }}

{{/* The Secret holding the fleet's targets file: an existing one, or the chart's own. */}}
{{- define "migrator.fleetTargetsSecretName" -}}
{{- if .Values.fleet.targets.existingSecret.name }}
{{- tpl .Values.fleet.targets.existingSecret.name . }}
{{- else }}
{{- printf "%s-fleet-targets" (include "migrator.fullname" . | trunc 49 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The checks every Job's values must pass; renders nothing. */}}
{{- define "migrator.checkValues" -}}
{{- $usesUrl := include "migrator.usesUrl" . }}
{{- if and (not $usesUrl) (not (and .Values.database.host .Values.database.name .Values.database.user)) }}
{{- fail "database: without a URL, host, name and user are required" }}
{{- end }}
{{- if and .Values.job.hook .Values.job.argocd }}
{{- fail "job.argocd needs job.hook=false: Argo CD ignores Helm hooks once its own are present" }}
{{- end }}
{{- if .Values.migrator.phases }}
{{- if ne .Values.migrator.command "upgrade" }}
{{- fail "migrator.phases runs `upgrade --phase pre`, then `upgrade --phase post`: only an upgrade runs in phases, migrator.command must be upgrade" }}
{{- end }}
{{- if not (has .Values.migrator.target (list "head" "heads")) }}
{{- fail "migrator.phases upgrades each phase to its own head: migrator.target must be head" }}
{{- end }}
{{- if not (or .Values.job.hook .Values.job.argocd) }}
{{- fail "migrator.phases needs job.hook (or job.argocd): plain Jobs are applied together, so the post phase would not wait for the rollout" }}
{{- end }}
{{- end }}
{{- if .Values.fleet.enabled }}
{{- if ne .Values.migrator.command "upgrade" }}
{{- fail "fleet.enabled runs `migrator fleet upgrade migrator.target`: migrator.command must be upgrade" }}
{{- end }}
{{- if and (not .Values.fleet.targets.existingSecret.name) (not .Values.fleet.targets.list) }}
{{- fail "fleet: set targets.list, or targets.existingSecret.name (a Secret with the targets file)" }}
{{- end }}
{{- if and (not (kindIs "invalid" .Values.fleet.maxFailedIndexes)) (gt (int .Values.fleet.maxFailedIndexes) (int .Values.fleet.pods)) }}
{{- fail "fleet.maxFailedIndexes must not exceed fleet.pods" }}
{{- end }}
{{- if and .Values.fleet.canary (not (or .Values.job.hook .Values.job.argocd)) }}
{{- fail "fleet.canary needs job.hook (or job.argocd): a plain Job cannot wait for the canary, so the fleet would not either" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The image: by digest when one is given, else by tag (default: the chart's appVersion). */}}
{{- define "migrator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
{{- if .Values.database.existingSecret.name }}
{{- tpl .Values.database.existingSecret.name . }}
{{- else }}
{{- include "migrator.fullname" . }}
{{- end }}
{{- end }}

{{/* Does the URL (rather than the parts) reach the container? */}}
{{- define "migrator.usesUrl" -}}
{{- if .Values.database.existingSecret.name }}
{{- if .Values.database.existingSecret.urlKey }}true{{ end }}
{{- else if .Values.database.url }}true{{ end }}
{{- end }}

{{/* Annotations that make a resource a hook: a Helm hook, an Argo CD hook, or nothing (a
     plain resource). Argument (list root offset policy [when]); `offset` is the weight (the
     sync wave) relative to the Job's; `when` is "pre" (the default: before the release's
     resources, Argo CD's PreSync), "post" (after them: post-install,post-upgrade, Argo CD's
     PostSync) or "both" (a Secret the Jobs of both phases mount: created again for the post
     hooks when hook-succeeded deleted it after the pre hooks; under Argo CD a PreSync hook,
     which stays until the next sync replaces it, so the PostSync Job finds it). */}}
{{- define "migrator.hookAnnotations" -}}
{{- $root := index . 0 }}
{{- $offset := index . 1 }}
{{- $policy := index . 2 }}
{{- $when := "pre" }}
{{- if gt (len .) 3 }}{{ $when = index . 3 }}{{ end }}
{{- $helm := dict "pre" "pre-install,pre-upgrade" "post" "post-install,post-upgrade" "both" "pre-install,pre-upgrade,post-install,post-upgrade" }}
{{- if $root.Values.job.hook }}
helm.sh/hook: {{ get $helm $when }}
helm.sh/hook-weight: {{ add $root.Values.job.hookWeight $offset | quote }}
helm.sh/hook-delete-policy: {{ $policy }}
{{- else if $root.Values.job.argocd }}
argocd.argoproj.io/hook: {{ ternary "PostSync" "PreSync" (eq $when "post") }}
argocd.argoproj.io/sync-wave: {{ $offset | quote }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
{{- end }}
