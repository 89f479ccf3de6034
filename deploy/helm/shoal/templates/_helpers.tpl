{{/* Names and labels shared by every template. */}}

{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* 40 characters at most, so that every suffix below still fits a 63-character name. */}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "shoal.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "shoal.selector" -}}
app.kubernetes.io/name: {{ include "shoal.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "shoal.image" -}}
{{- $repo := .Values.image.repository | default .Values.p2p.v2.image -}}
{{- if .Values.image.digest -}}
{{ $repo }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repo }}:{{ .Values.image.tag | default .Values.p2p.v2.imageTag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "shoal.rootName" -}}{{ include "shoal.fullname" . }}-root{{- end -}}
{{- define "shoal.agentName" -}}{{ include "shoal.fullname" . }}-agent{{- end -}}
{{- define "shoal.webhookName" -}}{{ include "shoal.fullname" . }}-webhook{{- end -}}
{{- define "shoal.bootstrapName" -}}{{ include "shoal.fullname" . }}-bootstrap{{- end -}}
{{- define "shoal.p2pSecretName" -}}
{{- .Values.p2pSecret.existingSecret | default (printf "%s-p2p" (include "shoal.fullname" .)) -}}
{{- end -}}

{{/* The preheat job API's operator credential (key `secret`): the roots' and the
     webhook's, never the nodes'. */}}
{{- define "shoal.preheatSecretName" -}}
{{- .Values.preheat.existingSecret | default (printf "%s-preheat" (include "shoal.fullname" .)) -}}
{{- end -}}

{{/* The control API's TLS (ControlConfig): "true" when on. Off is the development mode. */}}
{{- define "shoal.controlTLS" -}}
{{- if .Values.control.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/* Where the control CA and the roots' certificate come from: certManager, hook or secret. */}}
{{- define "shoal.controlTLSMode" -}}
{{- $mode := .Values.control.tls.mode -}}
{{- if eq $mode "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}certManager{{- else -}}hook{{- end -}}
{{- else if has $mode (list "certManager" "hook" "secret") -}}
{{- $mode -}}
{{- else -}}
{{- fail (printf "control.tls.mode must be auto, certManager, hook or secret, not %q" $mode) -}}
{{- end -}}
{{- end -}}

{{/* The Secret with ca.crt, tls.crt and tls.key (cert-manager's layout for a CA issuer). */}}
{{- define "shoal.controlSecretName" -}}
{{- if eq (include "shoal.controlTLSMode" .) "secret" -}}
{{- required "control.tls.secretName is required with control.tls.mode=secret" .Values.control.tls.secretName -}}
{{- else -}}
{{- include "shoal.fullname" . }}-control-tls
{{- end -}}
{{- end -}}

{{/* Every name agents dial a root by (the headless Service's members by wildcard, so a
     larger root.replicas needs no new certificate), as shoal.webhook.bootstrap makes them. */}}
{{- define "shoal.controlNames" -}}
{{- $svc := printf "%s.%s.svc" (include "shoal.rootName" .) .Release.Namespace -}}
- {{ include "shoal.rootName" . }}
- {{ include "shoal.rootName" . }}.{{ .Release.Namespace }}
- {{ $svc }}
- {{ $svc }}.{{ .Values.clusterDomain }}
- "*.{{ $svc }}"
- "*.{{ $svc }}.{{ .Values.clusterDomain }}"
{{- end -}}

{{/* The roots' control endpoints, host:port, by their stable StatefulSet names. A root
     serves agents on its ProxyConfig.port (proxyPort here), not on its peer port. */}}
{{- define "shoal.roots" -}}
{{- $name := include "shoal.rootName" . -}}
{{- range $i := until (int .Values.root.replicas) }}
- {{ printf "%s-%d.%s.%s.svc.%s:%d" $name $i $name $.Release.Namespace $.Values.clusterDomain (int $.Values.proxyPort) | quote }}
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
{{- if include "shoal.controlTLS" .root }}
ControlConfig:
  tls: true
  caFile: /etc/shoal/control/ca.crt
  {{- if eq .mode "root" }}
  certFile: /etc/shoal/control/tls.crt
  keyFile: /etc/shoal/control/tls.key
  {{- end }}
{{- else }}
ControlConfig:
  # the development mode: joins carry registry credentials in clear (control.tls.enabled)
  tls: false
{{- end }}
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
{{- if and (eq .mode "root") .root.Values.preheat.enabled }}
PreheatConfig:
  # the preheat job API's operator credential (preheat.enabled)
  secretFile: /etc/shoal/preheat/secret
{{- end }}
{{- end -}}

{{/* Which TLS source the webhook uses: certManager, hook or secret. */}}
{{- define "shoal.tlsMode" -}}
{{- $mode := .Values.webhook.tls.mode -}}
{{- if eq $mode "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}certManager{{- else -}}hook{{- end -}}
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

{{/* True when a hook Job must make a Secret: the p2p secret, the webhook's certificate,
     the control API's CA and the roots' certificate, the preheat operator credential. */}}
{{- define "shoal.bootstrapNeeded" -}}
{{- $webhook := and .Values.webhook.enabled (eq (include "shoal.tlsMode" .) "hook") -}}
{{- $control := and (include "shoal.controlTLS" .) (eq (include "shoal.controlTLSMode" .) "hook") -}}
{{- $preheat := and .Values.preheat.enabled (not .Values.preheat.existingSecret) -}}
{{- if or (not .Values.p2pSecret.existingSecret) $webhook $control $preheat -}}true{{- end -}}
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
{{- if .Values.preheat.enabled }}
PreheatConfig:
  enable: true
  roots:
{{- include "shoal.roots" . | trim | nindent 4 }}
  secretFile: /etc/shoal/preheat/secret
  {{- if include "shoal.controlTLS" . }}
  tls: true
  caFile: /etc/shoal/control/ca.crt
  {{- else }}
  # the development mode (control.tls.enabled): job credentials cross in clear
  tls: false
  {{- end }}
  resyncPeriod: {{ .Values.preheat.resyncPeriod }}
  ttl: {{ .Values.preheat.ttl }}
  rate: {{ .Values.preheat.rate }}
{{- end }}
{{- end -}}

{{/* An httpGet probe on a named port, with the timings from values. */}}
{{- define "shoal.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  {{- with .scheme }}
  scheme: {{ . }}
  {{- end }}
periodSeconds: {{ int .probe.periodSeconds }}
timeoutSeconds: {{ int .probe.timeoutSeconds }}
failureThreshold: {{ int .probe.failureThreshold }}
{{- with .grace }}
terminationGracePeriodSeconds: {{ int . }}
{{- end }}
{{- end -}}

{{/* shoal node-setup, as the init container (and the rewrite sidecar) run it. */}}
{{- define "shoal.nodeSetupCommand" -}}
- shoal
- node-setup
- --config=/etc/shoal/p2p-config.yaml
- --hosts-dir=/host/hosts.d
- --host-path={{ .Values.nodeSetup.hostsDir }}
- --agent=http://127.0.0.1:{{ int .Values.proxyPort }}
- --containerd-config=/host/containerd/{{ base .Values.nodeSetup.containerdConfig }}
{{- if .Values.nodeSetup.resolveLocally }}
- --etc-hosts=/host/etc-hosts
{{- end }}
{{- range .Values.nodeSetup.mirrorRegistries }}
- --mirror={{ . }}
{{- end }}
{{- end -}}

{{- define "shoal.nodeSetupMounts" -}}
- name: config
  mountPath: /etc/shoal
  readOnly: true
- name: hosts-dir
  mountPath: /host/hosts.d
- name: containerd-config
  mountPath: /host/containerd
  readOnly: true
{{- if .Values.nodeSetup.resolveLocally }}
- name: etc-hosts
  mountPath: /host/etc-hosts
{{- end }}
{{- end -}}

{{/* Hook annotations of the bootstrap objects of one phase; RBAC before the Job. */}}
{{- define "shoal.hookAnnotations" -}}
helm.sh/hook: {{ .phase }}
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{/* ServiceAccount and the least RBAC for one bootstrap phase: get (by name) and
     create on the release namespace's Secrets; get and patch on the one webhook
     configuration whose caBundle it writes, when it writes one. */}}
{{- define "shoal.bootstrapRbac" -}}
{{- $root := .root }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "shoal.labels" $root | nindent 4 }}
    app.kubernetes.io/component: bootstrap
  annotations:
    {{- include "shoal.hookAnnotations" (dict "phase" .phase "weight" -10) | nindent 4 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "shoal.labels" $root | nindent 4 }}
    app.kubernetes.io/component: bootstrap
  annotations:
    {{- include "shoal.hookAnnotations" (dict "phase" .phase "weight" -10) | nindent 4 }}
rules:
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: {{ .secrets | toJson }}
    verbs: [get]
  # create cannot be limited by name (the name is in the body); the Job creates only
  # the Secrets above, and only when they are missing
  - apiGroups: [""]
    resources: [secrets]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "shoal.labels" $root | nindent 4 }}
    app.kubernetes.io/component: bootstrap
  annotations:
    {{- include "shoal.hookAnnotations" (dict "phase" .phase "weight" -10) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $root.Release.Namespace }}
{{- if .webhookConfiguration }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .name }}
  labels:
    {{- include "shoal.labels" $root | nindent 4 }}
    app.kubernetes.io/component: bootstrap
  annotations:
    {{- include "shoal.hookAnnotations" (dict "phase" .phase "weight" -10) | nindent 4 }}
rules:
  - apiGroups: [admissionregistration.k8s.io]
    resources: [mutatingwebhookconfigurations]
    resourceNames: [{{ .webhookConfiguration | quote }}]
    verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}
  labels:
    {{- include "shoal.labels" $root | nindent 4 }}
    app.kubernetes.io/component: bootstrap
  annotations:
    {{- include "shoal.hookAnnotations" (dict "phase" .phase "weight" -10) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end -}}

{{- define "shoal.bootstrapJob" -}}
{{- $root := .root }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "shoal.labels" $root | nindent 4 }}
    app.kubernetes.io/component: bootstrap
  annotations:
    {{- include "shoal.hookAnnotations" (dict "phase" .phase "weight" 0) | nindent 4 }}
spec:
  backoffLimit: 4
  activeDeadlineSeconds: 300
  template:
    metadata:
      labels:
        {{- include "shoal.labels" $root | nindent 8 }}
        app.kubernetes.io/component: bootstrap
    spec:
      serviceAccountName: {{ .name }}
      restartPolicy: Never
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: bootstrap
          image: {{ include "shoal.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [python, -m, shoal.webhook.bootstrap, secrets]
          args:
            {{- toYaml .args | nindent 12 }}
          resources:
            {{- toYaml $root.Values.bootstrap.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.webhook.securityContext | nindent 12 }}
      securityContext:
        {{- toYaml $root.Values.webhook.podSecurityContext | nindent 8 }}
      {{- with $root.Values.webhook.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.webhook.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
