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
# Kubernetes' own schemas (the kubernetes-validate package ships them: no cluster, no network)
venv=target/venv
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "== installing kubernetes-validate into $venv (PyPI)"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
chart=helm/fleetgate
echo "== helm lint --strict (default values + token)"
"$helm_bin" lint --strict "$chart" --set admin.token=ci-token
echo "== helm lint --strict (full values)"
"$helm_bin" lint --strict "$chart" -f "$chart/ci/full-values.yaml"
out="$(mktemp -d)"
"$helm_bin" template ci "$chart" --set admin.token=ci-token >"$out/default.yaml"
"$helm_bin" template ci "$chart" -f "$chart/ci/full-values.yaml" >"$out/full.yaml"
"$helm_bin" template ci "$chart" --set admin.token=ci-token --set replicaCount=1 >"$out/single.yaml"
echo "== every render against Kubernetes' schemas (kubernetes-validate --strict: unknown fields fail)"
"$venv/bin/kubernetes-validate" --strict --quiet "$out/default.yaml" "$out/full.yaml" "$out/single.yaml"
refuses() { # refuses WHAT ARGS...: the chart must refuse to render with ARGS
  local what="$1"; shift
  if "$helm_bin" template ci "$chart" "$@" >/dev/null 2>&1; then
    echo "helm-check: $what must fail to render" >&2; exit 1
  fi
}
refuses "an unknown values key (Tesla's chart's replicas)" --set admin.token=ci-token --set replicas=3
refuses "cluster.enabled=false with 2 replicas" --set admin.token=ci-token --set cluster.enabled=false
refuses "cert-manager without dnsNames" --set admin.token=ci-token --set tls.certManager.enabled=true
grep -q '^kind: PodDisruptionBudget' "$out/single.yaml" && { echo "helm-check: one replica must render no PodDisruptionBudget (it would block every drain)" >&2; exit 1; }
for kind in NetworkPolicy ServiceAccount Certificate; do
  grep -q "^kind: $kind" "$out/full.yaml" || { echo "helm-check: the full values must render a $kind" >&2; exit 1; }
done
for rendered in "$out/default.yaml" "$out/full.yaml"; do
  grep -q 'startupProbe:' "$rendered" && grep -q 'topologySpreadConstraints:' "$rendered" && grep -q 'automountServiceAccountToken: false' "$rendered" \
    || { echo "helm-check: $(basename "$rendered") lacks the startup probe, the topology spread or automountServiceAccountToken: false" >&2; exit 1; }
done
grep -q '"status_port": 8080' "$out/full.yaml" && grep -q '/etc/fleetgate/tesla/private-key.pem' "$out/full.yaml" \
  || { echo "helm-check: tesla.secret must open the status port and set the partner key's path" >&2; exit 1; }
grep -q '^kind: Deployment' "$out/default.yaml" || { echo "helm-check: default values must render a Deployment" >&2; exit 1; }
grep -q '^kind: StatefulSet' "$out/full.yaml" || { echo "helm-check: persistence must render a StatefulSet" >&2; exit 1; }
grep -q '"cluster": {' "$out/default.yaml" || { echo "helm-check: default values must run in cluster mode" >&2; exit 1; }
"$helm_bin" template ci "$chart" --set admin.token=ci-token --set cluster.enabled=false --set replicaCount=1 | grep -q '"cluster"' && { echo "helm-check: cluster.enabled=false must render no cluster section" >&2; exit 1; }
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
  env_args=(FLEETGATE_ADMIN_TOKEN=from-the-pods-secret)  # the chart always sets it from a Secret
  if grep -q 'name: FLEETGATE_KAFKA_SASL_PASSWORD' "$rendered"; then
    env_args+=(FLEETGATE_KAFKA_SASL_PASSWORD=from-the-pods-secret)
  fi
  if grep -q 'name: FLEETGATE_TESLA_TOKEN_KEY' "$rendered"; then
    env_args+=(FLEETGATE_TESLA_TOKEN_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f)
  fi
  echo "== fleetgate check-config on the config $(basename "$rendered" .yaml) values render"
  env "${env_args[@]}" target/debug/fleetgate check-config --no-file-checks --strict "$config" \
    || { echo "helm-check: the chart's $(basename "$rendered" .yaml) values render a config fleetgate refuses:" >&2; cat "$config" >&2; exit 1; }
done
echo "helm-check: ok ($(grep -c '^kind:' "$out/default.yaml") objects default, $(grep -c '^kind:' "$out/full.yaml") with full values)"
