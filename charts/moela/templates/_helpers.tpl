{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "moela.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name when it already contains the chart name, else
<release>-<chart>. Kept to 35 characters so the StatefulSet "<fullname>-expert-host-<shard>" stays within
the 52 a StatefulSet name may have (its pods' controller-revision-hash label adds 11).
*/}}
{{- define "moela.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 35 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 35 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 35 | trimSuffix "-" }}
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
host:port of every expert-host pod through the headless Service, grouped by shard in shard order: shard s
is StatefulSet <fullname>-expert-host-<s>, its pods <fullname>-expert-host-<s>-<r>, its replicas joined by
"|" (the services' static form, e.g. a|b,c|d). These are the static seeds; the registry adds the rest.
*/}}
{{- define "moela.expertHostAddresses" -}}
{{- $svc := include "moela.componentName" (dict "root" . "component" "expert-host") }}
{{- $groups := list }}
{{- range $s := until (int .Values.expertHost.shards) }}
{{- $replicas := list }}
{{- range $r := until (int $.Values.expertHost.replicasPerShard) }}
{{- $replicas = append $replicas (printf "%s-%d-%d.%s.%s.svc:%d" $svc $s $r $svc $.Release.Namespace (int $.Values.ports.grpc)) }}
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

{{/* The bundled Redis's URL (its Service). */}}
{{- define "moela.redisUrl" -}}
{{- printf "redis://%s:6379" (include "moela.componentName" (dict "root" . "component" "redis")) }}
{{- end }}

{{/*
Where the Redis URL comes from: "flag" (the bundled Redis: no credentials, passed as --redis-url) or
"secret" (an external one, from redis.existingSecret or the chart's Secret: env MOELA_<ROLE>_REDIS_URL).
*/}}
{{- define "moela.redisUrlSource" -}}
{{- if .Values.redis.enabled }}flag
{{- else if or .Values.redis.url .Values.redis.existingSecret }}secret
{{- else }}{{ fail "redis.url or redis.existingSecret is required when redis.enabled is false" }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates for values given in clear: <fullname>-secrets. */}}
{{- define "moela.secretName" -}}
{{- printf "%s-secrets" (include "moela.fullname" .) }}
{{- end }}

{{/* Whether the chart creates <fullname>-secrets: "true" or "". */}}
{{- define "moela.hasSecret" -}}
{{- $v := .Values }}
{{- if or (and $v.secrets.apiKey.value (not $v.secrets.apiKey.existingSecret)) (and $v.secrets.internalSecret.value (not $v.secrets.internalSecret.existingSecret)) (and (not $v.redis.enabled) $v.redis.url (not $v.redis.existingSecret)) }}true{{ end }}
{{- end }}

{{/* A secretKeyRef env entry: (dict "env" NAME "secret" SECRET "key" KEY). */}}
{{- define "moela.secretEnvEntry" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
{{- end }}

{{/* The env twin prefix of a role: MOELA_EXPERT_HOST_ for expert-host. */}}
{{- define "moela.envPrefix" -}}
{{- printf "MOELA_%s_" (.component | replace "-" "_" | upper) }}
{{- end }}

{{/*
Environment every moela container gets from Secrets and the TLS mount: the Redis URL (external Redis),
the internal gRPC secret, the router's API key, TLS file paths. (dict "root" $ "component" "decode")
*/}}
{{- define "moela.secretEnv" -}}
{{- $v := .root.Values }}
{{- $p := include "moela.envPrefix" . }}
{{- $own := include "moela.secretName" .root }}
{{- if eq (include "moela.redisUrlSource" .root) "secret" }}
{{- if $v.redis.existingSecret }}
{{ include "moela.secretEnvEntry" (dict "env" (print $p "REDIS_URL") "secret" $v.redis.existingSecret "key" $v.redis.existingSecretKey) }}
{{- else }}
{{ include "moela.secretEnvEntry" (dict "env" (print $p "REDIS_URL") "secret" $own "key" $v.redis.existingSecretKey) }}
{{- end }}
{{- end }}
{{- with $v.secrets.internalSecret }}
{{- if or .existingSecret .value }}
{{ include "moela.secretEnvEntry" (dict "env" (print $p "INTERNAL_SECRET") "secret" (default $own .existingSecret) "key" .key) }}
{{- end }}
{{- end }}
{{- if eq .component "router" }}
{{- with $v.secrets.apiKey }}
{{- if or .existingSecret .value }}
{{ include "moela.secretEnvEntry" (dict "env" (print $p "API_KEY") "secret" (default $own .existingSecret) "key" .key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.tls.enabled }}
- name: {{ print $p "TLS_CERT" }}
  value: {{ printf "%s/tls.crt" $v.tls.mountPath | quote }}
- name: {{ print $p "TLS_KEY" }}
  value: {{ printf "%s/tls.key" $v.tls.mountPath | quote }}
- name: {{ print $p "TLS_CA" }}
  value: {{ printf "%s/ca.crt" $v.tls.mountPath | quote }}
{{- if $v.tls.clientAuth }}
- name: {{ print $p "TLS_CLIENT_AUTH" }}
  value: "true"
{{- end }}
{{- end }}
{{- end }}

{{/* Registry flags every service takes: the Redis URL (bundled Redis) and, when set, the deployment's key prefix. */}}
{{- define "moela.registryArgs" -}}
{{- if eq (include "moela.redisUrlSource" .) "flag" }}
- --redis-url
- {{ include "moela.redisUrl" . | quote }}
{{- end }}
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
One probe (kind startup | readiness | liveness): the global probes.<kind> with the role's probes.<kind>
over it; gRPC health on the gRPC port, or tcpSocket with TLS (the kubelet's gRPC probe is plaintext only).
*/}}
{{- define "moela.probe" -}}
{{- $timing := mergeOverwrite (deepCopy (get .root.Values.probes .kind)) (deepCopy (default dict (get (default dict .role.probes) .kind))) }}
{{- if .root.Values.tls.enabled }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ .root.Values.ports.grpc }}
{{- end }}
{{ toYaml $timing }}
{{- end }}

{{/*
The moela container parts every role shares: image, ports, probes, resources, security context, mounts.
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
    {{- include "moela.probe" (dict "root" .root "role" .role "kind" "startup") | nindent 4 }}
  readinessProbe:
    {{- include "moela.probe" (dict "root" .root "role" .role "kind" "readiness") | nindent 4 }}
  livenessProbe:
    {{- include "moela.probe" (dict "root" .root "role" .role "kind" "liveness") | nindent 4 }}
  resources:
    {{- include "moela.resources" . | nindent 4 }}
  {{- with .root.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    # the root filesystem is read-only; tsx keeps its compile cache under /tmp
    - name: tmp
      mountPath: /tmp
    {{- if .root.Values.model.existingClaim }}
    - name: model
      mountPath: {{ .root.Values.model.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .root.Values.tls.enabled }}
    - name: tls
      mountPath: {{ .root.Values.tls.mountPath }}
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
{{- with .role.priorityClassName }}
priorityClassName: {{ . | quote }}
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
{{- with .role.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      {{- with .root.Values.tmpVolume.sizeLimit }}
      sizeLimit: {{ . }}
      {{- else }} {}
      {{- end }}
  {{- if .root.Values.model.existingClaim }}
  - name: model
    persistentVolumeClaim:
      claimName: {{ .root.Values.model.existingClaim }}
      readOnly: true
  {{- end }}
  {{- if .root.Values.tls.enabled }}
  - name: tls
    secret:
      secretName: {{ required "tls.existingSecret is required when tls.enabled is true" .root.Values.tls.existingSecret | quote }}
      defaultMode: 0440
  {{- end }}
{{- end }}

{{/*
The final pod spec: the chart's (text, a YAML map) with the role's extraPodSpec merged over it (maps
merge, lists and scalars replace). (dict "spec" $text "role" .Values.decode)
*/}}
{{- define "moela.mergePodSpec" -}}
{{- $spec := fromYaml .spec }}
{{- if hasKey $spec "Error" }}{{ fail (printf "internal: pod spec is not YAML: %s" (get $spec "Error")) }}{{ end }}
{{- toYaml (mergeOverwrite $spec (deepCopy (default dict .role.extraPodSpec))) }}
{{- end }}

{{/* Pod labels: the component's labels, the role's podLabels, and extra (e.g. the shard). */}}
{{- define "moela.podLabels" -}}
{{ include "moela.componentLabels" . }}
{{- with .role.podLabels }}
{{ toYaml . }}
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

{{/*
A PodDisruptionBudget for one component: (dict "root" $ "component" "decode" "role" .Values.decode), plus
optional "name" (default the component's name) and "selector" (labels added to the selector).
*/}}
{{- define "moela.pdb" -}}
{{- if .role.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ default (include "moela.componentName" .) .name }}
  labels:
    {{- include "moela.componentLabels" . | nindent 4 }}
    {{- with .selector }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- if hasKey .role.pdb "minAvailable" }}
  minAvailable: {{ .role.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .role.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "moela.selectorLabels" . | nindent 6 }}
      {{- with .selector }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
{{- end }}
