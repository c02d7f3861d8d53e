{{- define "pvebalance.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pvebalance.fullname" -}}
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

{{- define "pvebalance.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pvebalance.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pvebalance.labels" -}}
{{ include "pvebalance.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pvebalance.secretName" -}}
{{- default (printf "%s-proxmox" (include "pvebalance.fullname" .)) .Values.proxmox.existingSecret -}}
{{- end -}}

{{- define "pvebalance.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pvebalance.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pvebalance.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The services that run in this release: collector, planner, migrator, and the API if enabled. */}}
{{- define "pvebalance.components" -}}
{{- $list := list "collector" "planner" "migrator" -}}
{{- if .Values.api.enabled -}}{{- $list = append $list "api" -}}{{- end -}}
{{- join " " $list -}}
{{- end -}}

{{/* Where the services find Redis: REDIS_URL, and with Sentinel (the chart's own Redis in sentinel mode,
or externalRedis.sentinels) the sentinels and the master's name, which every service's client asks
(shared/redisconn.py). The chart's own sentinels are its Redis pods, by their stable names. */}}
{{- define "pvebalance.redisEnv" -}}
- name: REDIS_URL
  {{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:6379/0" .Release.Name | quote }}
  {{- else if .Values.externalRedis.existingSecret }}
  valueFrom:
    secretKeyRef: {name: {{ .Values.externalRedis.existingSecret }}, key: {{ .Values.externalRedis.existingSecretKey }}}
  {{- else }}
  value: {{ required "set externalRedis.url (or redis.enabled)" .Values.externalRedis.url | quote }}
  {{- end }}
{{- if and .Values.redis.enabled .Values.redis.sentinel.enabled }}
{{- $sentinels := list }}
{{- range $i := until 3 }}
{{- $sentinels = append $sentinels (printf "%s-redis-%d.%s-redis-headless:26379" $.Release.Name $i $.Release.Name) }}
{{- end }}
- name: PVEBALANCE_REDIS__SENTINELS
  value: {{ toJson $sentinels | quote }}
- name: PVEBALANCE_REDIS__MASTER_NAME
  value: pvebalance
{{- else if and (not .Values.redis.enabled) .Values.externalRedis.sentinels }}
- name: PVEBALANCE_REDIS__SENTINELS
  value: {{ toJson .Values.externalRedis.sentinels | quote }}
- name: PVEBALANCE_REDIS__MASTER_NAME
  value: {{ .Values.externalRedis.masterName | quote }}
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.passwordSecret }}
- name: PVEBALANCE_REDIS__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.externalRedis.passwordSecret }}, key: {{ .Values.externalRedis.passwordSecretKey }}}
{{- end }}
{{- end -}}
