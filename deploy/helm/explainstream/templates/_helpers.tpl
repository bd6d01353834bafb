{{/* Chart name, release full name and labels (the usual Helm conventions). */}}
{{- define "explainstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "explainstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "explainstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: explainstream
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: include "explainstream.selector" (list $ "consumer") */}}
{{- define "explainstream.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "explainstream.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "explainstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "explainstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "explainstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A value as the service reads it from the environment: whole numbers without ".0"
     or an exponent (Helm parses YAML numbers as float64). */}}
{{- define "explainstream.envValue" -}}
{{- $v := . -}}
{{- if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{- int64 $v -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/* A setting from .Values.config, or the service's default when null. */}}
{{- define "explainstream.setting" -}}
{{- $root := index . 0 -}}
{{- $value := index $root.Values.config (index . 1) -}}
{{- if kindIs "invalid" $value -}}{{- index . 2 -}}{{- else -}}{{- include "explainstream.envValue" $value -}}{{- end -}}
{{- end -}}

{{/* Pod pieces shared by the consumer and the gateway. */}}
{{- define "explainstream.envFrom" -}}
- configMapRef:
    name: {{ include "explainstream.fullname" . }}-config
{{- end -}}

{{/* Secret-backed env: include "explainstream.secretEnv" $ , or (list $ (list "KEY" ...))
     to leave keys out. */}}
{{- define "explainstream.secretEnv" -}}
{{- $root := . -}}
{{- $skip := list -}}
{{- if kindIs "slice" . -}}
{{- $root = index . 0 -}}
{{- $skip = index . 1 -}}
{{- end -}}
{{- range $root.Values.secrets.keys }}
{{- if not (has . $skip) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.secrets.name }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}
{{- end -}}

{{/* PromQL label matchers of this release's consumers (the ServiceMonitor's labels). */}}
{{- define "explainstream.promSelector" -}}
job="explainstream",namespace="{{ .Release.Namespace }}",app_kubernetes_io_instance="{{ .Release.Name }}"
{{- end -}}

{{/* Seconds a consumer may take to start: the startupProbe's budget. */}}
{{- define "explainstream.startupBudget" -}}
{{- mul (int .Values.consumer.startupProbe.periodSeconds) (int .Values.consumer.startupProbe.failureThreshold) -}}
{{- end -}}

{{- define "explainstream.progressDeadline" -}}
{{- $c := .Values.consumer -}}
{{- if kindIs "invalid" $c.progressDeadlineSeconds -}}
{{- add (int (include "explainstream.startupBudget" .)) (mul (int $c.readinessProbe.periodSeconds) (int $c.readinessProbe.failureThreshold)) 120 -}}
{{- else -}}
{{- int $c.progressDeadlineSeconds -}}
{{- end -}}
{{- end -}}

{{/* Ports of "host:port,host:port" (a URL's authority too); fallback when none is named. */}}
{{- define "explainstream.hostPorts" -}}
{{- $ports := list -}}
{{- $default := index . 1 -}}
{{- range $hp := splitList "," (index . 0) -}}
{{- $hp = trim $hp -}}
{{- if regexMatch ":[0-9]+$" $hp -}}
{{- $ports = append $ports (regexFind "[0-9]+$" $hp | int) -}}
{{- else if $hp -}}
{{- $ports = append $ports $default -}}
{{- end -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}

{{/* The chart refuses values that would break the service at run time. */}}
{{- define "explainstream.checks" -}}
{{- $drain := float64 (include "explainstream.setting" (list . "DRAIN_TIMEOUT_S" 30)) -}}
{{- $grace := float64 .Values.consumer.terminationGracePeriodSeconds -}}
{{- if lt $grace (addf $drain 10) -}}
{{- fail (printf "consumer.terminationGracePeriodSeconds (%v) must be above config.DRAIN_TIMEOUT_S (%v) by at least 10 s: the final commit, producer close and group leave follow the drain" $grace $drain) -}}
{{- end -}}
{{- $c := .Values.consumer -}}
{{- if and (eq (toString $c.strategy.maxSurge) "0") (eq (toString $c.strategy.maxUnavailable) "0") -}}
{{- fail "consumer.strategy: maxSurge and maxUnavailable are both 0: a rollout could never replace a pod" -}}
{{- end -}}
{{- $budget := int (include "explainstream.startupBudget" .) -}}
{{- if and (not (kindIs "invalid" $c.progressDeadlineSeconds)) (le (int $c.progressDeadlineSeconds) $budget) -}}
{{- fail (printf "consumer.progressDeadlineSeconds (%v) must be above the startup budget (startupProbe periodSeconds x failureThreshold = %d s): a slow model load would fail the rollout" $c.progressDeadlineSeconds $budget) -}}
{{- end -}}
{{- range .Values.extraVolumes -}}
{{- if hasKey . "persistentVolumeClaim" -}}
{{- fail (printf "extraVolumes: %s is a PersistentVolumeClaim; put it in consumer.extraVolumes (the gateway mounts extraVolumes too, and a ReadWriteOnce claim on both fails Multi-Attach)" .name) -}}
{{- end -}}
{{- end -}}
{{- $slots := int (include "explainstream.setting" (list . "MAX_CONCURRENT_REQUESTS" 16)) -}}
{{- if .Values.keda.enabled -}}
{{- range $tier := list "urgent" "high" "normal" "low" -}}
{{- $t := int (index $.Values.keda.kafka.tiers $tier).lagThreshold -}}
{{- if lt $t $slots -}}
{{- fail (printf "keda.kafka.tiers.%s.lagThreshold (%d) is below config.MAX_CONCURRENT_REQUESTS (%d): a pod keeping up holds that many uncommitted, and KEDA would ask ceil(%d / %d) = %d pods for it" $tier $t $slots $slots $t (int (ceil (divf $slots $t)))) -}}
{{- end -}}
{{- end -}}
{{- $gpu := .Values.keda.prometheus.gpuUtilization -}}
{{- if and $gpu.enabled (lt (float64 $gpu.threshold) 1.0) -}}
{{- fail (printf "keda.prometheus.gpuUtilization.threshold (%v) is below 1: NVML reads ~1.0 per GPU with one decode running, so N busy pods would ask ceil(N / %v) > N, up to maxReplicaCount" $gpu.threshold $gpu.threshold) -}}
{{- end -}}
{{- end -}}
{{- $partitions := int (include "explainstream.setting" (list . "KAFKA_PARTITIONS" 3)) -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicaCount) (mul $partitions 4)) -}}
{{- fail (printf "keda.maxReplicaCount (%v) is above config.KAFKA_PARTITIONS x 4 tiers (%d): the extra consumers would get no partition" .Values.keda.maxReplicaCount (mul $partitions 4)) -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) -}}
{{- fail (printf "keda.minReplicaCount (%v) is above keda.maxReplicaCount (%v)" .Values.keda.minReplicaCount .Values.keda.maxReplicaCount) -}}
{{- end -}}
{{- end -}}

{{/* Egress of both workloads: Kafka, the schema registry when set, DNS. Ports come from
     KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL, plus the values' extra ports. */}}
{{- define "explainstream.egress" -}}
{{- $np := .Values.networkPolicy -}}
{{- $bootstrap := include "explainstream.setting" (list . "KAFKA_BOOTSTRAP_SERVERS" "127.0.0.1:9092") -}}
{{- $kafkaPorts := concat (include "explainstream.hostPorts" (list $bootstrap 9092) | fromJsonArray) $np.kafka.ports -}}
- to:
    {{- toYaml $np.kafka.peers | nindent 4 }}
  ports:
    {{- range $kafkaPorts | uniq }}
    - protocol: TCP
      port: {{ int . }}
    {{- end }}
{{- if not (kindIs "invalid" .Values.config.SCHEMA_REGISTRY_URL) }}
{{- $url := urlParse .Values.config.SCHEMA_REGISTRY_URL -}}
{{- $default := ternary 443 80 (eq $url.scheme "https") -}}
{{- $registryPorts := concat (include "explainstream.hostPorts" (list $url.host $default) | fromJsonArray) $np.schemaRegistry.ports }}
- to:
    {{- toYaml $np.schemaRegistry.peers | nindent 4 }}
  ports:
    {{- range $registryPorts | uniq }}
    - protocol: TCP
      port: {{ int . }}
    {{- end }}
{{- end }}
- to:
    {{- toYaml $np.dns.peers | nindent 4 }}
  ports:
    {{- range $np.dns.ports }}
    - protocol: UDP
      port: {{ . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
