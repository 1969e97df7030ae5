#!/usr/bin/env bash
# Property-based API testing of the admin API with schemathesis (PyPI) against a real server:
# every operation in /openapi.json, generated inputs, checked for server errors and responses
# that break the schema. Installs schemathesis into target/venv on first use.
#   scripts/schemathesis.sh [EXAMPLES_PER_OPERATION]
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-40}"
venv=target/venv
if [ ! -x "$venv/bin/st" ]; then
  echo "== installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi
cargo build -q --bin fleetgate
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
target/debug/fleetgate certs dev --out "$work/certs" --no-negative >/dev/null
target/debug/fleetgate tesla keygen --out "$work/tesla" >/dev/null
token="schemathesis-$(date +%s)"
cat >"$work/config.json" <<JSON
{"host": "127.0.0.1", "port": 0, "log_level": "warn",
 "tls": {"ca_file": "certs/ca.pem", "server_cert": "certs/server.pem", "server_key": "certs/server.key"},
 "records": {"V": ["logger"]},
 "fleetgate": {"admin": {"listen": "127.0.0.1:0", "token": "$token"}, "data_dir": "data", "logger_file": "records.jsonl",
   "tesla": {"private_key_file": "tesla/private-key.pem", "hostname": "localhost", "port": 4443, "ca_file": "certs/ca.pem",
             "client_id": "schemathesis", "partner_domain": "localhost",
             "fleet_api_url": "http://127.0.0.1:9", "auth_url": "http://127.0.0.1:9"}}}
JSON
# onboarding is on (its routes take generated accounts and vehicles); its Fleet API is a
# closed loopback port, so the reconciler's calls fail fast and are retried with backoff
export FLEETGATE_TESLA_TOKEN_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
RUST_LOG=info target/debug/fleetgate serve --config "$work/config.json" 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 100); do
  admin=$(grep -Eo 'admin=[0-9.:]+' "$work/server.log" | head -1 | cut -d= -f2 || true)
  [ -n "$admin" ] && break
  sleep 0.1
done
[ -n "${admin:-}" ] || { echo "schemathesis: the server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
echo "== schemathesis against http://$admin/openapi.json ($examples examples per operation)"
"$venv/bin/st" run "http://$admin/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  -n "$examples" --no-color
kill -0 "$pid" || { echo "schemathesis: the server died during the run" >&2; exit 1; }
echo "schemathesis: the server answered every generated request without a server error"
