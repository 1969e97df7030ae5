{{- define "fleetgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fleetgate.labels" -}}
app.kubernetes.io/name: {{ include "fleetgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fleetgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fleetgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleetgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fleetgate.adminSecret" -}}
{{- default (printf "%s-admin" (include "fleetgate.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{/* config.json: the user's Tesla-style config with the paths and ports the pod uses. */}}
{{- define "fleetgate.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := set $cfg "host" "0.0.0.0" -}}
{{- $_ := set $cfg "port" 4443 -}}
{{- $tls := dict "server_cert" "/etc/fleetgate/tls/tls.crt" "server_key" "/etc/fleetgate/tls/tls.key" -}}
{{- if .Values.tls.caSecret }}{{- $_ := set $tls "ca_file" "/etc/fleetgate/ca/ca.pem" -}}{{- end -}}
{{- $_ := set $cfg "tls" $tls -}}
{{- $_ := set $cfg "monitoring" (dict "prometheus_metrics_port" .Values.metrics.port "prometheus_metrics_host" "0.0.0.0") -}}
{{- $fg := deepCopy (default dict $cfg.fleetgate) -}}
{{- $_ := set $fg "admin" (dict "listen" (printf "0.0.0.0:%v" .Values.admin.port)) -}}
{{- $_ := set $fg "data_dir" "/var/lib/fleetgate" -}}
{{- if .Values.sitesGeoJson }}{{- $_ := set $fg "sites_file" "/etc/fleetgate/config/sites.geojson" -}}{{- end -}}
{{- if and .Values.proxyMtls.enabled (empty .Values.proxyMtls.trustedProxies) }}{{- fail "proxyMtls.enabled needs proxyMtls.trustedProxies: the load balancer's address ranges (CIDR)" -}}{{- end -}}
{{- if .Values.proxyMtls.enabled }}{{- $_ := set $fg "proxy_mtls" (dict "listen" (printf "0.0.0.0:%v" .Values.proxyMtls.port) "header" .Values.proxyMtls.header "trusted_proxies" .Values.proxyMtls.trustedProxies "tls" .Values.proxyMtls.tls) -}}{{- end -}}
{{- if .Values.tesla.secret }}
{{- $_ := set $cfg "status_port" .Values.tesla.statusPort -}}
{{- $tesla := deepCopy (default dict $fg.tesla) -}}
{{- $_ := set $tesla "private_key_file" "/etc/fleetgate/tesla/private-key.pem" -}}
{{- if not (hasKey $tesla "ca_file") }}{{- $_ := set $tesla "ca_file" "/etc/fleetgate/tesla/ca-chain.pem" -}}{{- end -}}
{{- $_ := set $fg "tesla" $tesla -}}
{{- end -}}
{{- if .Values.cluster.enabled }}{{- $_ := set $fg "cluster" (dict "name" (default .Release.Name .Values.cluster.name) "session_timeout_s" .Values.cluster.sessionTimeoutSeconds "transaction_timeout_s" .Values.cluster.transactionTimeoutSeconds "startup_wait_s" .Values.cluster.startupWaitSeconds) -}}{{- end -}}
{{- $_ := set $cfg "fleetgate" $fg -}}
{{- toPrettyJson $cfg -}}
{{- end -}}
