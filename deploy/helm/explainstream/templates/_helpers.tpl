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

{{- define "explainstream.secretEnv" -}}
{{- $root := . -}}
{{- range .Values.secrets.keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.secrets.name }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end -}}

{{/* The chart refuses values that would break the service at run time. */}}
{{- define "explainstream.checks" -}}
{{- $drain := float64 (include "explainstream.setting" (list . "DRAIN_TIMEOUT_S" 30)) -}}
{{- $grace := float64 .Values.consumer.terminationGracePeriodSeconds -}}
{{- if le $grace $drain -}}
{{- fail (printf "consumer.terminationGracePeriodSeconds (%v) must be above config.DRAIN_TIMEOUT_S (%v): the kubelet would kill a consumer mid-drain" $grace $drain) -}}
{{- end -}}
{{- $partitions := int (include "explainstream.setting" (list . "KAFKA_PARTITIONS" 3)) -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicaCount) (mul $partitions 4)) -}}
{{- fail (printf "keda.maxReplicaCount (%v) is above config.KAFKA_PARTITIONS x 4 tiers (%d): the extra consumers would get no partition" .Values.keda.maxReplicaCount (mul $partitions 4)) -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) -}}
{{- fail (printf "keda.minReplicaCount (%v) is above keda.maxReplicaCount (%v)" .Values.keda.minReplicaCount .Values.keda.maxReplicaCount) -}}
{{- end -}}
{{- end -}}

{{/* Egress of both workloads: Kafka, the schema registry when set, DNS. */}}
{{- define "explainstream.egress" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    {{- toYaml $np.kafka.peers | nindent 4 }}
  ports:
    {{- range $np.kafka.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- if not (kindIs "invalid" .Values.config.SCHEMA_REGISTRY_URL) }}
- to:
    {{- toYaml $np.schemaRegistry.peers | nindent 4 }}
  ports:
    {{- range $np.schemaRegistry.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}
