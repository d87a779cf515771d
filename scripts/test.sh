#!/usr/bin/env bash
# Install what is missing, then run the whole test suite against real OpenBao and CoreDNS.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec python3 -m pytest "$@"
