#!/bin/sh
# Stand-in for the acme.sh 3.x command line, used by tests/test_docs.py only where real acme.sh is
# not installed (it is in no package registry; CI machines cannot download it). It covers the
# subset docs/zh/tutorial.md uses: --issue, --install-cert, --renew --force, --revoke. The ACME
# protocol is lego's; every DNS step runs ~/.acme.sh/dnsapi/dns_internal.sh through harness.sh,
# which reproduces how acme.sh sources and calls hooks, with account.conf where acme.sh keeps it.
# File layout follows acme.sh: ~/.acme.sh/<domain>_ecc/{<domain>.key,fullchain.cer,ca.cer}.
set -euf  # no globbing: domains include *.name

home="$HOME/.acme.sh"
harness="$(dirname "$(readlink -f "$0")")/harness.sh"  # next to the real file, not the symlink
action="" server="" domains="" key_file="" fullchain_file="" reloadcmd=""
while [ $# -gt 0 ]; do
  case "$1" in
    --issue | --install-cert | --renew | --revoke) action="$1" ;;
    --server) server="$2"; shift ;;
    -d) domains="$domains $2"; shift ;;
    --key-file) key_file="$2"; shift ;;
    --fullchain-file) fullchain_file="$2"; shift ;;
    --reloadcmd) reloadcmd="$2"; shift ;;
    --dns | --dnssleep) shift ;;
    --force) ;;
    *) echo "acme.sh stand-in: unsupported argument $1" >&2; exit 2 ;;
  esac
  shift
done
main="${domains# }"
main="${main%% *}"
dir="$home/${main}_ecc"
conf="$dir/$main.conf"
mkdir -p "$dir"
# shellcheck disable=SC1090  # the per-certificate settings this script wrote
if [ -f "$conf" ]; then . "$conf"; fi

bridge="$dir/lego-bridge.sh"
cat > "$bridge" <<BRIDGE
#!/bin/sh
case "\$1" in present) action=add ;; cleanup) action=rm ;; *) exit 1 ;; esac
ACCOUNT_CONF_PATH="$home/account.conf" exec sh "$harness" "$home/dnsapi/dns_internal.sh" "\$action" "\${2%.}" "\$3"
BRIDGE
chmod +x "$bridge"

lego_run() {
  # shellcheck disable=SC2046  # one -d per domain, split on purpose (globbing is off)
  set -- --server "$Le_Server" --accept-tos --email "admin@$main" --path "$dir/lego" --key-type ec256 \
    --dns exec --dns.disable-cp $(for d in $Le_Domains; do printf -- '-d %s ' "$d"; done) "$@"
  EXEC_PATH="$bridge" EXEC_SEQUENCE_INTERVAL=1 lego "$@"
}

collect() {
  file="$(echo "$main" | sed 's/\*/_/')"
  cp "$dir/lego/certificates/$file.key" "$dir/$main.key"
  cp "$dir/lego/certificates/$file.crt" "$dir/fullchain.cer"
  cp "$dir/lego/certificates/$file.issuer.crt" "$dir/ca.cer"
}

install_cert() {
  [ -n "${Le_KeyFile:-}" ] && cp "$dir/$main.key" "$Le_KeyFile"
  [ -n "${Le_FullchainFile:-}" ] && cp "$dir/fullchain.cer" "$Le_FullchainFile"
  if [ -n "${Le_ReloadCmd:-}" ]; then sh -c "$Le_ReloadCmd"; fi
}

save() {
  {
    echo "Le_Server='$Le_Server'"; echo "Le_Domains='$Le_Domains'"
    echo "Le_KeyFile='${Le_KeyFile:-}'"; echo "Le_FullchainFile='${Le_FullchainFile:-}'"
    echo "Le_ReloadCmd='${Le_ReloadCmd:-}'"
  } > "$conf"
}

case "$action" in
  --issue)
    Le_Server="$server" Le_Domains="$domains"
    lego_run run
    collect; save ;;
  --install-cert)
    Le_KeyFile="$key_file" Le_FullchainFile="$fullchain_file" Le_ReloadCmd="$reloadcmd"
    save; install_cert ;;
  --renew)
    lego_run renew --days 100000 --no-random-sleep
    collect; install_cert ;;
  --revoke)
    lego_run revoke ;;
  *) echo "acme.sh stand-in: no action" >&2; exit 2 ;;
esac
