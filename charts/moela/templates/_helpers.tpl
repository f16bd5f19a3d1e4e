{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "moela.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name when it already contains the chart name, else
<release>-<chart>. Kept to 40 characters so "<fullname>-expert-host-<ordinal>" stays a valid label.
*/}}
{{- define "moela.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "moela.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "moela.labels" -}}
helm.sh/chart: {{ include "moela.chart" . }}
app.kubernetes.io/name: {{ include "moela.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: moela
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "decode"). */}}
{{- define "moela.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moela.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "moela.componentLabels" -}}
{{ include "moela.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object name of a component: <fullname>-<component>. */}}
{{- define "moela.componentName" -}}
{{- printf "%s-%s" (include "moela.fullname" .root) .component }}
{{- end }}

{{/* The one moela image, every role: <repository>:<tag> (deploy/docker/Dockerfile); the role is an argument. */}}
{{- define "moela.image" -}}
{{- printf "%s:%s" .root.Values.image.repository (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}

{{/* The image's entrypoint (the moela CLI) runs the role: `serve --role <role>` then the service's flags. */}}
{{- define "moela.serveArgs" -}}
- serve
- --role
- {{ . }}
{{- end }}

{{/*
host:port of every expert-host pod through the headless Service, grouped by shard in shard order:
shard s is served by the pods whose ordinal mod shards is s (s, s+shards, ...), its replicas joined by
"|" (the services' static form, e.g. a|b,c|d). These are the static seeds; the registry adds the rest.
*/}}
{{- define "moela.expertHostAddresses" -}}
{{- $name := include "moela.componentName" (dict "root" . "component" "expert-host") }}
{{- $shards := int .Values.expertHost.shards }}
{{- $groups := list }}
{{- range $s := until $shards }}
{{- $replicas := list }}
{{- range $r := until (int $.Values.expertHost.replicasPerShard) }}
{{- $replicas = append $replicas (printf "%s-%d.%s.%s.svc:%d" $name (add $s (mul $r $shards)) $name $.Release.Namespace (int $.Values.ports.grpc)) }}
{{- end }}
{{- $groups = append $groups (join "|" $replicas) }}
{{- end }}
{{- join "," $groups }}
{{- end }}

{{/* host:port of every decode replica: the router's static seeds (the registry adds the registered ones). */}}
{{- define "moela.decodeAddresses" -}}
{{- $name := include "moela.componentName" (dict "root" . "component" "decode") }}
{{- $addrs := list }}
{{- range $i := until (int .Values.decode.replicas) }}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc:%d" $name $i $name $.Release.Namespace (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{/* The Redis URL: the bundled Redis's Service, or redis.url. */}}
{{- define "moela.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:6379" (include "moela.componentName" (dict "root" . "component" "redis")) }}
{{- else }}
{{- required "redis.url is required when redis.enabled is false" .Values.redis.url }}
{{- end }}
{{- end }}

{{/* Registry flags every service takes: the Redis URL and, when set, the deployment's key prefix. */}}
{{- define "moela.registryArgs" -}}
- --redis-url
- {{ include "moela.redisUrl" . | quote }}
{{- with .Values.queuePrefix }}
- --queue-prefix
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The address a StatefulSet pod registers (--advertise-address): its own stable DNS name through the
headless Service, from POD_NAME (the downward API, see moela.podNameEnv). For pod i it is exactly the
i-th static address the router or the expert-host seed list names, so a seed and its registration are
one instance. (dict "root" $ "component" "decode")
*/}}
{{- define "moela.advertiseAddress" -}}
{{- $name := include "moela.componentName" . }}
{{- printf "$(POD_NAME).%s.%s.svc:%d" $name .root.Release.Namespace (int .root.Values.ports.grpc) }}
{{- end }}

{{- define "moela.podNameEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* Flags every service takes (one YAML list item per token). */}}
{{- define "moela.commonArgs" -}}
- --model
- {{ .Values.model.path | quote }}
- --grpc-address
- {{ printf "0.0.0.0:%d" (int .Values.ports.grpc) | quote }}
- --metrics-address
- {{ printf "0.0.0.0:%d" (int .Values.ports.metrics) | quote }}
- --precision
- {{ .Values.precision | quote }}
- --log-level
- {{ .Values.logLevel | quote }}
{{- end }}

{{/*
resources of a role with its GPU count added: (dict "root" $ "role" .Values.decode).
Extended resources must have requests == limits, so the GPU goes into both.
*/}}
{{- define "moela.resources" -}}
{{- $res := deepCopy (default dict .role.resources) }}
{{- if gt (int .role.gpu) 0 }}
{{- $limits := default dict (get $res "limits") }}
{{- $_ := set $limits "nvidia.com/gpu" (int .role.gpu) }}
{{- $_ = set $res "limits" $limits }}
{{- $requests := default dict (get $res "requests") }}
{{- $_ = set $requests "nvidia.com/gpu" (int .role.gpu) }}
{{- $_ = set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
The moela container parts every role shares: image, ports, probes, resources, model mount.
(dict "root" $ "component" "decode" "role" .Values.decode)
*/}}
{{- define "moela.container" -}}
- name: {{ .component }}
  image: {{ include "moela.image" . | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  ports:
    - name: grpc
      containerPort: {{ .root.Values.ports.grpc }}
      protocol: TCP
    - name: metrics
      containerPort: {{ .root.Values.ports.metrics }}
      protocol: TCP
    {{- if eq .component "router" }}
    - name: http
      containerPort: {{ .root.Values.ports.http }}
      protocol: TCP
    {{- end }}
  startupProbe:
    grpc:
      port: {{ .root.Values.ports.grpc }}
    periodSeconds: {{ .root.Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .root.Values.probes.startup.failureThreshold }}
  readinessProbe:
    grpc:
      port: {{ .root.Values.ports.grpc }}
    periodSeconds: {{ .root.Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .root.Values.probes.readiness.failureThreshold }}
  livenessProbe:
    grpc:
      port: {{ .root.Values.ports.grpc }}
    periodSeconds: {{ .root.Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .root.Values.probes.liveness.failureThreshold }}
  resources:
    {{- include "moela.resources" . | nindent 4 }}
  {{- with .root.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    # tsx keeps its compile cache under /tmp
    - name: tmp
      mountPath: /tmp
    {{- if .root.Values.model.existingClaim }}
    - name: model
      mountPath: {{ .root.Values.model.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* Pod-level parts every moela role shares: (dict "root" $ "role" .Values.decode). */}}
{{- define "moela.podSpec" -}}
terminationGracePeriodSeconds: {{ .root.Values.terminationGracePeriodSeconds }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  {{- if .root.Values.model.existingClaim }}
  - name: model
    persistentVolumeClaim:
      claimName: {{ .root.Values.model.existingClaim }}
      readOnly: true
  {{- end }}
{{- end }}

{{/* Pod annotations: the role's own plus prometheus.io hints for Prometheis without the operator. */}}
{{- define "moela.podAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- with .role.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget for one component: (dict "root" $ "component" "decode" "role" .Values.decode). */}}
{{- define "moela.pdb" -}}
{{- if .role.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "moela.componentName" . }}
  labels:
    {{- include "moela.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .role.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "moela.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
