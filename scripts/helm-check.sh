#!/usr/bin/env bash
# Lints and renders the Helm chart with the default and the full values file, then runs the
# config each one renders through the real binary (`fleetgate check-config --strict`).
# helm is built from the Go module proxy (helm.sh/helm/v3) into target/tools when not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=v3.22.0
helm_bin="$(command -v helm || true)"
if [ -z "$helm_bin" ]; then
  helm_bin="$PWD/target/tools/helm"
  if [ ! -x "$helm_bin" ]; then
    command -v go >/dev/null || { echo "helm-check: neither helm nor go found: install Go (helm is built from the Go module proxy)" >&2; exit 1; }
    echo "== building helm $HELM_VERSION with go install (first run only, a few minutes)"
    mkdir -p target/tools
    GOBIN="$PWD/target/tools" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
fi
chart=helm/fleetgate
echo "== helm lint (default values + token)"
"$helm_bin" lint "$chart" --set admin.token=ci-token
echo "== helm lint (full values)"
"$helm_bin" lint "$chart" -f "$chart/ci/full-values.yaml"
out="$(mktemp -d)"
"$helm_bin" template ci "$chart" --set admin.token=ci-token >"$out/default.yaml"
"$helm_bin" template ci "$chart" -f "$chart/ci/full-values.yaml" >"$out/full.yaml"
grep -q '^kind: Deployment' "$out/default.yaml" || { echo "helm-check: default values must render a Deployment" >&2; exit 1; }
grep -q '^kind: StatefulSet' "$out/full.yaml" || { echo "helm-check: persistence must render a StatefulSet" >&2; exit 1; }
grep -q '"cluster": {' "$out/default.yaml" || { echo "helm-check: default values must run in cluster mode" >&2; exit 1; }
"$helm_bin" template ci "$chart" --set admin.token=ci-token --set cluster.enabled=false | grep -q '"cluster"' && { echo "helm-check: cluster.enabled=false must render no cluster section" >&2; exit 1; }
grep -q '^kind: ServiceMonitor' "$out/full.yaml" || { echo "helm-check: serviceMonitor.enabled must render a ServiceMonitor" >&2; exit 1; }
grep -q 'name: proxy-mtls' "$out/full.yaml" && grep -q '"trusted_proxies"' "$out/full.yaml" || { echo "helm-check: proxyMtls.enabled must render the listener, its port and its config" >&2; exit 1; }
if "$helm_bin" template ci "$chart" --set admin.token=ci-token --set proxyMtls.enabled=true >/dev/null 2>&1; then
  echo "helm-check: proxyMtls without trustedProxies must fail" >&2; exit 1
fi
if "$helm_bin" template ci "$chart" >/dev/null 2>&1; then
  echo "helm-check: rendering without an admin token must fail" >&2; exit 1
fi
# The chart's values must start the real binary: the rendered config.json of every values file
# goes through `fleetgate check-config` (files it names live in the pod: not opened; secrets the
# workload passes as environment variables count as set).
cargo build -q --bin fleetgate
for rendered in "$out/default.yaml" "$out/full.yaml"; do
  config="${rendered%.yaml}.config.json"
  python3 - "$rendered" "$config" <<'PY'
import sys
# the ConfigMap's `config.json: |` block scalar: the lines indented deeper than its key
lines = open(sys.argv[1]).read().split("\n")
start = [i for i, l in enumerate(lines) if l.strip() == "config.json: |"]
if len(start) != 1:
    sys.exit(f"helm-check: expected one config.json in {sys.argv[1]}, found {len(start)}")
key_indent = len(lines[start[0]]) - len(lines[start[0]].lstrip())
body = []
for line in lines[start[0] + 1:]:
    if line.strip() and len(line) - len(line.lstrip()) <= key_indent:
        break
    body.append(line[key_indent + 2:])
open(sys.argv[2], "w").write("\n".join(body))
PY
  env_args=()
  if grep -q 'name: FLEETGATE_KAFKA_SASL_PASSWORD' "$rendered"; then
    env_args=(FLEETGATE_KAFKA_SASL_PASSWORD=from-the-pods-secret)
  fi
  echo "== fleetgate check-config on the config $(basename "$rendered" .yaml) values render"
  env "${env_args[@]}" target/debug/fleetgate check-config --no-file-checks --strict "$config" \
    || { echo "helm-check: the chart's $(basename "$rendered" .yaml) values render a config fleetgate refuses:" >&2; cat "$config" >&2; exit 1; }
done
echo "helm-check: ok ($(grep -c '^kind:' "$out/default.yaml") objects default, $(grep -c '^kind:' "$out/full.yaml") with full values)"
