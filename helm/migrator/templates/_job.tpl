{{/* The Job's spec, indented for `spec:`. A plain Job (job.hook=false) is named after a
     hash of it (migrator.jobName), so it is rendered once for the name, once for the Job. */}}
{{- define "migrator.jobSpec" }}
{{- $usesUrl := include "migrator.usesUrl" . }}
  backoffLimit: {{ .Values.job.backoffLimit }}
  activeDeadlineSeconds: {{ .Values.job.activeDeadlineSeconds }}
  {{- if not (kindIs "invalid" .Values.job.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ .Values.job.ttlSecondsAfterFinished }}
  {{- end }}
  # A retry cannot fix bad configuration (2), a difference found by check/verify (5) or
  # refused credentials (6): fail at once. An evicted pod does not count as a failure.
  podFailurePolicy:
    rules:
      - action: FailJob
        onExitCodes:
          containerName: migrator
          operator: In
          values: [2, 5, 6, 8]
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
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
          # The entrypoint alone, no arguments: the environment below decides what runs
          # (the image's CMD would otherwise count as arguments).
          command: ["migrator"]
          env:
            - name: MIGRATOR_COMMAND
              value: {{ .Values.migrator.command | quote }}
            - name: MIGRATOR_TARGET
              value: {{ .Values.migrator.target | quote }}
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
            - name: MIGRATOR_LOG_FORMAT
              value: {{ .Values.migrator.logFormat | quote }}
            - name: MIGRATOR_LOG_LEVEL
              value: {{ .Values.migrator.logLevel | quote }}
            {{- with .Values.migrator.config }}
            - name: MIGRATOR_CONFIG
              value: {{ . | quote }}
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
