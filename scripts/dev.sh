#!/usr/bin/env bash
# Install what is missing, then run OpenBao (dev) + CoreDNS + dnsapi on 127.0.0.1 in the
# foreground. Arguments go to `dnsapi dev` (see `dnsapi dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec dnsapi dev "$@"
