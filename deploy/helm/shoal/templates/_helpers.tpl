{{/* Names and labels shared by every template. */}}

{{- define "shoal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "shoal.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shoal.image" -}}
{{ .Values.p2p.v2.image }}:{{ .Values.p2p.v2.imageTag }}
{{- end -}}

{{- define "shoal.rootName" -}}{{ include "shoal.fullname" . }}-root{{- end -}}
{{- define "shoal.webhookName" -}}{{ include "shoal.fullname" . }}-webhook{{- end -}}
{{- define "shoal.p2pSecretName" -}}
{{- .Values.p2pSecret.existingSecret | default (printf "%s-p2p" (include "shoal.fullname" .)) -}}
{{- end -}}

{{/* The roots as host:port, by their stable StatefulSet names. */}}
{{- define "shoal.roots" -}}
{{- $name := include "shoal.rootName" . -}}
{{- range $i := until (int .Values.root.replicas) }}
- {{ printf "%s-%d.%s.%s.svc:%d" $name $i $name $.Release.Namespace (int $.Values.p2p.v2.p2pPort) | quote }}
{{- end -}}
{{- end -}}

{{/* The config file of agents and roots, in the reference format (shoal.config). */}}
{{- define "shoal.p2pConfig" -}}
{{- $v := .root.Values.p2p.v2 -}}
DeployConfig:
  mode: {{ .mode }}
  logDir: /dadi-p2p/log
  logAudit: {{ .root.Values.agent.logAudit }}
  logAuditMode: {{ .root.Values.agent.logAuditMode }}
ExporterConfig:
  enable: {{ $v.exporter.enable }}
  port: {{ int $v.exporter.port }}
  standaloneExporterPort: true
ProxyConfig:
  port: {{ int .root.Values.proxyPort }}
  proxyConcurrencyLimit: {{ int $v.proxyConcurrencyLimit }}
P2PConfig:
  p2pPort: {{ int $v.p2pPort }}
  throttleLimitMB: {{ int $v.throttleLimitMB }}
  secretFile: /etc/shoal/p2p/secret
  roots:
{{- include "shoal.roots" .root | trim | nindent 4 }}
CacheConfig:
  path: /dadi-p2p/cache
  capacity: {{ .capacity | int64 }}
  aioEnable: {{ int $v.cache.aioEnable }}
UpstreamConfig:
  default: {{ .root.Values.upstream.default | quote }}
  {{- with .root.Values.upstream.registries }}
  registries:
    {{- toYaml . | nindent 4 }}
  {{- else }}
  registries: []
  {{- end }}
  accessCheckTtl: {{ .root.Values.upstream.accessCheckTTL }}
AcceleratorConfig:
  enable: true
{{- end -}}

{{/* Which TLS source the webhook uses: certManager, helm or secret. */}}
{{- define "shoal.tlsMode" -}}
{{- $mode := .Values.webhook.tls.mode -}}
{{- if eq $mode "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}certManager{{- else -}}helm{{- end -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{- define "shoal.tlsSecretName" -}}
{{- if eq (include "shoal.tlsMode" .) "secret" -}}
{{- required "webhook.tls.secretName is required with webhook.tls.mode=secret" .Values.webhook.tls.secretName -}}
{{- else -}}
{{- include "shoal.webhookName" . }}-tls
{{- end -}}
{{- end -}}

{{/* The webhook's config file (shoal.webhook.config). */}}
{{- define "shoal.webhookConfig" -}}
ServerConfig:
  port: {{ int .Values.webhook.port }}
  tlsCertFile: /etc/shoal/tls/tls.crt
  tlsKeyFile: /etc/shoal/tls/tls.key
AccelerateConfig:
  labelKey: {{ .Values.webhook.labelKey | quote }}
  labelValue: {{ .Values.webhook.labelValue | quote }}
  modeAnnotation: {{ .Values.webhook.labelKey | quote }}
  p2pPort: {{ int .Values.proxyPort }}
  registries:
    {{- $regs := list }}
    {{- range .Values.upstream.registries }}{{ $regs = append $regs .host }}{{ end }}
    {{- range .Values.webhook.extraRegistryPatterns }}{{ $regs = append $regs . }}{{ end }}
    {{- if .Values.upstream.default }}{{ $regs = append $regs .Values.upstream.default }}{{ end }}
    {{- range ($regs | uniq) }}
    - {{ . | quote }}
    {{- else }} []
    {{- end }}
SecretConfig:
  enable: {{ .Values.webhook.secrets.enable }}
  syncTimeout: {{ .Values.webhook.secrets.syncTimeout }}
  resyncPeriod: {{ .Values.webhook.secrets.resyncPeriod }}
{{- end -}}
