#!/usr/bin/env bash
# Install everything the dev stack and the tests need, on a fresh Debian machine or an old one.
# Idempotent and quick when everything is there already: the CoreDNS build is cached outside the
# repository (~/.cache/dnsapi/coredns-<version>/coredns) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

COREDNS_VERSION=v1.14.7
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dnsapi"
COREDNS_BIN="$CACHE/coredns-$COREDNS_VERSION/coredns"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: dig and nsupdate, curl, wget (the hook under both), openssl, the ACME clients
# lego and certbot (with its RFC 2136 plugin) and nginx for the end-to-end tests, knsupdate, the
# linter shellcheck for the hooks, chattr and pgrep for the fault tests, BIND (named) for
# bench/compare.py and named-checkzone for the zone oracle, systemd-analyze for the unit files,
# update-ca-certificates for the tutorial's trust step, and faketime for a client whose clock
# is off (the RFC 2136 door's BADTIME).
missing=()
for pair in dig:bind9-dnsutils curl:curl wget:wget openssl:openssl lego:lego certbot:certbot \
            nginx:nginx-light shellcheck:shellcheck chattr:e2fsprogs pgrep:procps named:bind9 \
            systemd-analyze:systemd update-ca-certificates:ca-certificates \
            named-checkzone:bind9-utils knsupdate:knot-dnsutils faketime:faketime; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
dpkg -s python3-certbot-dns-rfc2136 >/dev/null 2>&1 || missing+=(python3-certbot-dns-rfc2136)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# Python packages: dnsapi itself (editable, from THIS checkout) with the test extras, which bring
# the OpenBao server. -I keeps the current directory off sys.path, so this sees the installed copy.
installed_here() {
  python3 -I -c 'import os, sys, dnsapi, hvac, aiohttp, dns, yaml, pytest, pytest_asyncio, hypothesis
import cryptography, prometheus_client, schemathesis, pydantic, mypy, build
sys.exit(os.path.dirname(os.path.realpath(dnsapi.__file__)) != os.path.realpath("dnsapi"))' 2>/dev/null
}
if ! installed_here || ! command -v bao >/dev/null 2>&1 || ! command -v dnsapi >/dev/null 2>&1 \
   || ! command -v ruff >/dev/null 2>&1; then
  echo "bootstrap: installing Python packages"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
fi

# CoreDNS, pinned, built once from the Go module proxy.
if [ ! -x "$COREDNS_BIN" ]; then
  command -v go >/dev/null 2>&1 || { echo "bootstrap: Go >= 1.25 is needed to build CoreDNS" >&2; exit 1; }
  echo "bootstrap: building CoreDNS $COREDNS_VERSION into $(dirname "$COREDNS_BIN") (a few minutes, once)"
  mkdir -p "$(dirname "$COREDNS_BIN")"
  GOBIN="$(dirname "$COREDNS_BIN")" GOFLAGS=-mod=mod go install "github.com/coredns/coredns@$COREDNS_VERSION"
fi
# Print the first line of each version; no `| head`, whose early exit would SIGPIPE the writer
# and fail this script under pipefail.
first_line() { local out; out="$("$@")"; printf '%s\n' "${out%%$'\n'*}"; }
first_line "$COREDNS_BIN" -version
first_line bao version
