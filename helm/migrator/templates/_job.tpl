{{/* The Job's spec, indented for `spec:`; argument (list root phase), phase "" (no
     MIGRATOR_PHASE), "pre" or "post". A plain Job (job.hook=false) is named after a hash of
     it (migrator.jobName), so it is rendered once for the name, once for the Job. */}}
{{- define "migrator.jobSpec" }}
{{- $phase := index . 1 }}
{{- with index . 0 }}
  backoffLimit: {{ .Values.job.backoffLimit }}
  activeDeadlineSeconds: {{ .Values.job.activeDeadlineSeconds }}
  {{- if not (kindIs "invalid" .Values.job.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ .Values.job.ttlSecondsAfterFinished }}
  {{- end }}
{{- include "migrator.podFailurePolicy" "FailJob" }}
{{- include "migrator.podTemplate" (dict "root" . "mode" "" "phase" $phase) }}
{{- end }}
{{- end }}

{{/* The podFailurePolicy, indented for `spec:`; its argument is the action for the exit
     statuses a retry cannot fix: FailJob, or FailIndex in an Indexed Job (that index alone
     fails; the others go on, within fleet.maxFailedIndexes). */}}
{{- define "migrator.podFailurePolicy" }}
  # A retry cannot fix bad configuration (2), a difference found by check/verify (5),
  # refused credentials (6) or a refusal by the safety gate (8): fail at once (the
  # exceptions marked permanent in migrator/errors.py). An evicted pod is no failure.
  podFailurePolicy:
    rules:
      - action: {{ . }}
        onExitCodes:
          containerName: migrator
          operator: In
          values: [2, 5, 6, 8]
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
{{- end }}

{{/* The pod template, indented for `spec:`, shared by every Job the chart renders. Its
     argument is a dict: root (the chart's context), mode: "" for the single Job (the
     environment says what runs), "canary" or "shard" for the tenant fleet's Jobs (arguments
     `fleet upgrade TARGET`, the targets file, the fleet's settings), and phase: "" (every
     pending revision, as without phases), "pre" or "post" (MIGRATOR_PHASE for the single
     Job, `--phase` for the fleet's). */}}
{{- define "migrator.podTemplate" }}
{{- $mode := .mode }}
{{- $phase := .phase }}
{{- with .root }}
{{- $usesUrl := include "migrator.usesUrl" . }}
  template:
    metadata:
      labels:
        {{- include "migrator.labels" . | nindent 8 }}
        # Service-mesh sidecars would keep the pod running after the migrator exits.
        sidecar.istio.io/inject: "false"
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        sidecar.istio.io/inject: "false"
        linkerd.io/inject: disabled
        {{- if and $mode (not .Values.fleet.targets.existingSecret.name) }}
        # A new list of targets changes the pod template: a plain Job's name follows it.
        checksum/fleet-targets: {{ join "\n" .Values.fleet.targets.list | sha256sum }}
        {{- end }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      restartPolicy: Never
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . | quote }}
      {{- end }}
      serviceAccountName: {{ include "migrator.serviceAccountName" . }}
      automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      {{- with .Values.initContainers }}
      # Run before the migrator; one with restartPolicy: Always is a native sidecar (a
      # database proxy), stopped by the kubelet once the migrator exits.
      initContainers:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: migrator
          image: {{ include "migrator.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          {{- if $mode }}
          command: ["migrator"]
          args: ["fleet", "upgrade", {{ .Values.migrator.target | quote }}{{ if eq $mode "canary" }}, "--canary-only"{{ end }}{{ if $phase }}, "--phase", {{ $phase | quote }}{{ end }}]
          {{- else }}
          # The entrypoint alone, no arguments: the environment below decides what runs
          # (the image's CMD would otherwise count as arguments).
          command: ["migrator"]
          {{- end }}
          env:
            {{- if not $mode }}
            - name: MIGRATOR_COMMAND
              value: {{ .Values.migrator.command | quote }}
            - name: MIGRATOR_TARGET
              value: {{ .Values.migrator.target | quote }}
            {{- if $phase }}
            # The deploy phase (migrator.phases): pre before the rollout, post after it.
            - name: MIGRATOR_PHASE
              value: {{ $phase | quote }}
            {{- end }}
            {{- end }}
            - name: MIGRATOR_ALLOW_DOWNGRADE
              value: {{ .Values.migrator.allowDowngrade | quote }}
            - name: MIGRATOR_ALLOW_UNKNOWN_REVISION
              value: {{ .Values.migrator.allowUnknownRevision | quote }}
            - name: MIGRATOR_WAIT_TIMEOUT
              value: {{ .Values.migrator.waitTimeout | quote }}
            - name: MIGRATOR_CONNECT_TIMEOUT
              value: {{ .Values.migrator.connectTimeout | quote }}
            - name: MIGRATOR_LOCK_TIMEOUT
              value: {{ .Values.migrator.lockTimeout | quote }}
            {{- if not (kindIs "invalid" .Values.migrator.statementTimeout) }}
            - name: MIGRATOR_STATEMENT_TIMEOUT
              value: {{ .Values.migrator.statementTimeout | quote }}
            {{- end }}
            {{- if not (kindIs "invalid" .Values.migrator.ddlLockTimeout) }}
            - name: MIGRATOR_DDL_LOCK_TIMEOUT
              value: {{ .Values.migrator.ddlLockTimeout | quote }}
            {{- end }}
            - name: MIGRATOR_DDL_LOCK_RETRIES
              value: {{ .Values.migrator.ddlLockRetries | quote }}
            - name: MIGRATOR_SAFETY
              value: {{ .Values.migrator.safety | quote }}
            - name: MIGRATOR_SAFETY_MEASURE
              value: {{ .Values.migrator.safetyMeasure | quote }}
            - name: MIGRATOR_ON_CHANGED_REVISION
              value: {{ .Values.migrator.onChangedRevision | quote }}
            # The deploy ledger's "by which deploy": this release, its revision (a hook Job's
            # only: a plain Job's spec names no revision, see migrator.jobName) and the image.
            {{- $revision := ternary (printf " revision %d" (int .Release.Revision)) "" (and .Values.job.hook true) }}
            - name: MIGRATOR_DEPLOY_ID
              value: {{ .Values.migrator.deployId | default (printf "helm %s%s image %s" .Release.Name $revision (include "migrator.image" .)) | quote }}
            - name: MIGRATOR_LOG_FORMAT
              value: {{ .Values.migrator.logFormat | quote }}
            - name: MIGRATOR_LOG_LEVEL
              value: {{ .Values.migrator.logLevel | quote }}
            {{- with .Values.migrator.config }}
            - name: MIGRATOR_CONFIG
              value: {{ . | quote }}
            {{- end }}
            {{- if $mode }}
            # Each line of the file: a database name on the server below, a full URL, or
            # schema=NAME (a schema in the database below).
            - name: MIGRATOR_FLEET_FILE
              value: /etc/migrator/fleet/targets
            {{- if eq $mode "shard" }}
            # Kubernetes sets JOB_COMPLETION_INDEX: this pod takes every target whose
            # 0-based position in the file modulo the shard count equals its index.
            - name: MIGRATOR_FLEET_SHARDS
              value: {{ .Values.fleet.pods | quote }}
            {{- else }}
            - name: MIGRATOR_FLEET_CANARY
              value: {{ .Values.fleet.canary | quote }}
            {{- end }}
            - name: MIGRATOR_FLEET_PARALLELISM
              value: {{ .Values.fleet.parallelism | quote }}
            - name: MIGRATOR_FLEET_MAX_FAILURES
              value: {{ .Values.fleet.maxFailures | quote }}
            {{- end }}
            {{- if $usesUrl }}
            - name: DATABASE_URL_FILE
              value: /var/run/secrets/migrator/url
            {{- else }}
            - name: DB_HOST
              value: {{ .Values.database.host | quote }}
            - name: DB_PORT
              value: {{ .Values.database.port | quote }}
            - name: DB_NAME
              value: {{ .Values.database.name | quote }}
            - name: DB_USER
              value: {{ .Values.database.user | quote }}
            - name: DB_PASSWORD_FILE
              value: /var/run/secrets/migrator/password
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .Values.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          terminationMessagePolicy: FallbackToLogsOnError
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          volumeMounts:
            - name: database-secret
              mountPath: /var/run/secrets/migrator
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if $mode }}
            - name: fleet-targets
              mountPath: /etc/migrator/fleet
              readOnly: true
            {{- end }}
            {{- with .Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: database-secret
          secret:
            secretName: {{ include "migrator.secretName" . }}
            defaultMode: 0440
            items:
              {{- if .Values.database.existingSecret.name }}
              - key: {{ ternary .Values.database.existingSecret.urlKey .Values.database.existingSecret.passwordKey (eq $usesUrl "true") }}
              {{- else }}
              - key: {{ ternary "url" "password" (eq $usesUrl "true") }}
              {{- end }}
                path: {{ ternary "url" "password" (eq $usesUrl "true") }}
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
        {{- if $mode }}
        - name: fleet-targets
          secret:
            secretName: {{ include "migrator.fleetTargetsSecretName" . }}
            defaultMode: 0440
            items:
              - key: {{ ternary .Values.fleet.targets.existingSecret.key "targets" (not (empty .Values.fleet.targets.existingSecret.name)) }}
                path: targets
        {{- end }}
        {{- with .Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
{{- end }}

{{/* A tenant fleet's Job spec, indented for `spec:`; its argument is (list root mode phase).
     "canary": a plain Job that upgrades the first fleet.canary targets, run before the rest.
     "shard": an Indexed Job of fleet.pods pods, each upgrading its share of the targets;
     a failed index is retried on its own (backoffLimitPerIndex), and one that a retry
     cannot fix fails at once (FailIndex) without failing the others. */}}
{{- define "migrator.fleetJobSpec" }}
{{- $mode := index . 1 }}
{{- $phase := index . 2 }}
{{- with index . 0 }}
  {{- if eq $mode "shard" }}
  completionMode: Indexed
  completions: {{ .Values.fleet.pods }}
  parallelism: {{ .Values.fleet.podParallelism | default .Values.fleet.pods }}
  backoffLimitPerIndex: {{ .Values.fleet.backoffLimitPerIndex }}
  {{- if not (kindIs "invalid" .Values.fleet.maxFailedIndexes) }}
  maxFailedIndexes: {{ .Values.fleet.maxFailedIndexes }}
  {{- end }}
  {{- else }}
  backoffLimit: {{ .Values.job.backoffLimit }}
  {{- end }}
  activeDeadlineSeconds: {{ .Values.job.activeDeadlineSeconds }}
  {{- if not (kindIs "invalid" .Values.job.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ .Values.job.ttlSecondsAfterFinished }}
  {{- end }}
{{- include "migrator.podFailurePolicy" (ternary "FailIndex" "FailJob" (eq $mode "shard")) }}
{{- include "migrator.podTemplate" (dict "root" . "mode" $mode "phase" $phase) }}
{{- end }}
{{- end }}
