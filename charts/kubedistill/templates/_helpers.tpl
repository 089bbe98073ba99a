{{/* Names, labels and the pod template shared by the stable and canary Deployments. */}}

{{- define "kubedistill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 56 characters so that "-canary" still fits in 63. */}}
{{- define "kubedistill.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubedistill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What the Service selects: the stable and the canary pods alike. */}}
{{- define "kubedistill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubedistill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "kubedistill.labels" -}}
helm.sh/chart: {{ include "kubedistill.chart" . }}
{{ include "kubedistill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubedistill
{{- end }}

{{- define "kubedistill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubedistill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is set. Argument: an image block. */}}
{{- define "kubedistill.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/* A pinned model URI, or fail with a message that says why. Argument: dict "uri" "what". */}}
{{- define "kubedistill.pinnedUri" -}}
{{- $uri := .uri | default "" }}
{{- if not $uri }}
{{- fail (printf "%s is empty: set it to a pinned model, models:/NAME/VERSION or s3://bucket/key.onnx" .what) }}
{{- end }}
{{- if or (contains "@" $uri) (regexMatch "^models:/[^/]+/latest$" $uri) }}
{{- fail (printf "%s '%s' is a moving alias: a running Deployment must pin a version (models:/NAME/VERSION); the rollout is what moves it" .what $uri) }}
{{- end }}
{{- if not (regexMatch "^(models:/[^/@]+/[0-9]+|models:/m-[0-9a-f]{8,64}|s3://[^/]+/.+)$" $uri) }}
{{- fail (printf "%s '%s' is not a pinned model: use models:/NAME/VERSION, models:/<model_id> or s3://bucket/key.onnx" .what $uri) }}
{{- end }}
{{- $uri }}
{{- end }}

{{/* The writable mount points (the root filesystem is read-only). */}}
{{- define "kubedistill.cacheDir" -}}/var/cache/kubedistill{{- end }}

{{/*
The server container. Argument: dict "root" $ "track" "stable"|"canary" "uri" URI "kserve" bool.
As a KServe predictor it is named kserve-container (what KServe looks for), its port has no name (Knative
allows only http1/h2c) and the probes name the port by number; Knative refuses `privileged`.
*/}}
{{- define "kubedistill.container" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $cache := include "kubedistill.cacheDir" $root }}
{{- $port := ternary $v.server.port "http" .kserve }}
- name: {{ ternary "kserve-container" "server" .kserve }}
  image: {{ include "kubedistill.imageRef" $v.image | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  # a crashed server's last lines (e.g. "error: model not found") show in the pod status
  terminationMessagePolicy: FallbackToLogsOnError
  args:
    - serve
    - --model
    - {{ .uri | quote }}
    - --name
    - {{ $v.model.name | quote }}
    - --host
    - "0.0.0.0"
    - --port
    - {{ $v.server.port | quote }}
    - --workers
    - {{ $v.server.workers | quote }}
    {{- if $v.server.threads }}
    - --threads
    - {{ $v.server.threads | quote }}
    {{- end }}
    - --max-body-mb
    - {{ $v.server.maxBodyMb | quote }}
    - --max-images
    - {{ $v.server.maxImages | quote }}
    - --max-batch-size
    - {{ $v.server.maxBatchSize | quote }}
    - --max-latency-ms
    - {{ $v.server.maxLatencyMs | quote }}
    - --graceful-timeout
    - {{ $v.server.gracefulTimeout | quote }}
    - --log-level
    - {{ $v.server.logLevel | quote }}
    - {{ ternary "--access-log" "--no-access-log" $v.server.accessLog }}
  ports:
    {{- if .kserve }}
    - containerPort: {{ $v.server.port }}
      protocol: TCP
    {{- else }}
    - name: http
      containerPort: {{ $v.server.port }}
      protocol: TCP
    {{- end }}
  envFrom:
    - configMapRef:
        name: {{ include "kubedistill.fullname" $root }}
    {{- if and $v.credentials.existingSecret (not $v.credentials.secretKeys) }}
    - secretRef:
        name: {{ $v.credentials.existingSecret }}
    {{- end }}
  env:
    - name: HOME
      value: {{ $cache }}
    - name: KUBEDISTILL_CACHE
      value: {{ $cache }}
    - name: KUBEDISTILL_TRACK
      value: {{ .track }}
    {{- if $v.credentials.secretKeys }}
    {{- range $env, $key := $v.credentials.secretKeys }}
    - name: {{ $env }}
      valueFrom:
        secretKeyRef:
          name: {{ $v.credentials.existingSecret }}
          key: {{ $key }}
    {{- end }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    httpGet:
      path: /v2/health/live
      port: {{ $port }}
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /v2/health/ready
      port: {{ $port }}
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /v2/health/live
      port: {{ $port }}
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  resources:
    {{- $res := deepCopy $v.resources }}
    {{- if $v.gpu.enabled }}
    {{- $limits := $res.limits | default dict }}
    {{- $_ := set $limits "nvidia.com/gpu" (toString $v.gpu.count) }}
    {{- $_ := set $res "limits" $limits }}
    {{- end }}
    {{- toYaml $res | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    {{- if .kserve }}
    {{- /* Knative takes pod-level security settings only behind a feature flag: they are set here */}}
    runAsUser: {{ $v.securityContext.runAsUser }}
    runAsGroup: {{ $v.securityContext.runAsGroup }}
    {{- end }}
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    {{- if not .kserve }}
    privileged: false
    {{- end }}
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: cache
      mountPath: {{ $cache }}
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* The writable volumes of a server pod. Argument: the root context. */}}
{{- define "kubedistill.volumes" -}}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.cache.sizeLimit }}
    {{- with .Values.cache.medium }}
    medium: {{ . }}
    {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{/* Where a server pod may run: nodeSelector, tolerations (GPU ones added), affinity, spread, priority. */}}
{{- define "kubedistill.scheduling" -}}
{{- $v := .Values }}
{{- $nodeSelector := $v.nodeSelector }}
{{- if $v.gpu.enabled }}
{{- $nodeSelector = merge (deepCopy $v.nodeSelector) $v.gpu.nodeSelector }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := $v.tolerations }}
{{- if $v.gpu.enabled }}
{{- $tolerations = concat $v.tolerations $v.gpu.tolerations }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pod annotations of a server: config checksum (a change rolls the pods), model, the user's. */}}
{{- define "kubedistill.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
kubedistill.io/model-uri: {{ .uri | quote }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The pod template of a server Deployment. Argument: dict "root" $ "track" "stable"|"canary" "uri" URI.
*/}}
{{- define "kubedistill.podTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
metadata:
  labels:
    {{- include "kubedistill.labels" $root | nindent 4 }}
    kubedistill.io/track: {{ .track }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "kubedistill.podAnnotations" . | nindent 4 }}
spec:
  serviceAccountName: {{ include "kubedistill.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ add $v.server.gracefulTimeout 15 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $v.securityContext.runAsUser }}
    runAsGroup: {{ $v.securityContext.runAsGroup }}
    fsGroup: {{ $v.securityContext.fsGroup }}
    seccompProfile:
      type: RuntimeDefault
  containers:
    {{- include "kubedistill.container" (dict "root" $root "track" .track "uri" .uri "kserve" false) | trim | nindent 4 }}
  volumes:
    {{- include "kubedistill.volumes" $root | nindent 4 }}
  {{- include "kubedistill.scheduling" $root | trim | nindent 2 }}
{{- end }}

{{/* Where `helm test` sends its inference: the chart's Service, or the InferenceService's predictor. */}}
{{- define "kubedistill.testUrl" -}}
{{- if eq .Values.serving.mode "kserve" }}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "kubedistill.fullname" .) .Release.Namespace }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "kubedistill.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}
{{- end }}
