{{- define "aegis.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aegis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aegis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aegis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aegis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aegis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "aegis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aegis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aegis.image" -}}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion .Values.image.flavor) .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Chips per pod: tpu.chips, or the product of the topology's dimensions (2x4 -> 8). */}}
{{- define "aegis.tpuChips" -}}
{{- if .Values.tpu.chips -}}
{{- .Values.tpu.chips | int -}}
{{- else -}}
{{- $chips := 1 -}}
{{- range splitList "x" .Values.tpu.topology -}}
{{- $chips = mul $chips (int .) -}}
{{- end -}}
{{- $chips -}}
{{- end -}}
{{- end -}}

{{/* Pod termination: the preStop wait, the appliance's drain, and time to exit. */}}
{{- define "aegis.terminationGraceSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (ceil .Values.server.shutdownGraceS | int) (int .Values.stopMarginSeconds) -}}
{{- end -}}

{{/* A TOML value: strings, numbers and booleans as JSON writes them (valid TOML), lists as
arrays and maps as inline tables, recursively. */}}
{{- define "aegis.toml" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true -}}
{{- range $key, $value := . -}}
{{- if not (kindIs "invalid" $value) -}}
{{- if not $first }}, {{ end -}}{{- $first = false -}}
{{- include "aegis.tomlKey" $key }} = {{ include "aegis.toml" $value -}}
{{- end -}}
{{- end -}} }
{{- else if kindIs "slice" . -}}
[{{- range $index, $value := . -}}{{- if $index }}, {{ end -}}{{- include "aegis.toml" $value -}}{{- end -}}]
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{- define "aegis.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* One TOML table body: key = value lines. */}}
{{- define "aegis.tomlTable" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ include "aegis.tomlKey" $key }} = {{ include "aegis.toml" $value }}
{{- end }}
{{- end }}
{{- end -}}
