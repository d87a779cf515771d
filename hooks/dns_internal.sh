#!/usr/bin/env sh
# shellcheck disable=SC2034
dns_internal_info='dnsapi - internal zones served by CoreDNS, records kept in Vault
 Adds and removes _acme-challenge TXT records through a dnsapi service. The add returns only
 once every DNS server dnsapi knows answers the value, so run acme.sh with --dnssleep 0.
Options:
 DNSAPI_URL URL of the dnsapi service, e.g. https://dnsapi.dev.local:8053
 DNSAPI_TOKEN API token (the service config holds only its sha256)
 DNSAPI_CA_BUNDLE CA bundle for the service TLS certificate. Optional.
 DNSAPI_TIMEOUT Seconds one request may take, waiting for the DNS servers included. Optional, default 120.
'

# Install: copy to ~/.acme.sh/dnsapi/dns_internal.sh, export DNSAPI_URL and DNSAPI_TOKEN once, then
#   acme.sh --issue --dns dns_internal --dnssleep 0 -d example.dev.local -d '*.example.dev.local' ...
# The settings are saved in account.conf, so renewals from cron work without the variables.

########  Public functions #####################

# Usage: dns_internal_add _acme-challenge.www.dev.local "XKrxpRBosdIKFzxW_CT3KLZNf6q0HG9i01zxXp5CPBs"
dns_internal_add() {
  fulldomain="$1"
  txtvalue="$2"
  _dnsapi_settings || return 1
  _info "Adding $fulldomain through dnsapi at $DNSAPI_URL (waiting until its DNS servers answer)"
  if ! _dnsapi_call POST "$(_dnsapi_body "$fulldomain" "$txtvalue" ',"wait":true')"; then
    if [ "$_dnsapi_status" = "504" ] || [ "$_dnsapi_status" = "500" ]; then
      # Stored but not served in time (504), or stored in Vault but not yet in the zone file
      # (500). acme.sh never calls _rm after a failed _add, so take the value out again here
      # rather than leave it behind.
      _info "Removing the value again"
      _dnsapi_call DELETE "$(_dnsapi_body "$fulldomain" "$txtvalue" "")"
    fi
    return 1
  fi
  # Saved only after a success, so a mistyped URL or token is not kept for renewals.
  _saveaccountconf_mutable DNSAPI_URL "$DNSAPI_URL"
  _saveaccountconf_mutable DNSAPI_TOKEN "$DNSAPI_TOKEN"
  if [ -n "$DNSAPI_CA_BUNDLE" ]; then
    _saveaccountconf_mutable DNSAPI_CA_BUNDLE "$DNSAPI_CA_BUNDLE"
  fi
  _info "Added; the DNS servers answer it"
  return 0
}

# Usage: dns_internal_rm _acme-challenge.www.dev.local "XKrxpRBosdIKFzxW_CT3KLZNf6q0HG9i01zxXp5CPBs"
# Removes only this value: the apex and the wildcard of one certificate share a name.
dns_internal_rm() {
  fulldomain="$1"
  txtvalue="$2"
  _dnsapi_settings || return 1
  _info "Removing $fulldomain value through dnsapi"
  _dnsapi_call DELETE "$(_dnsapi_body "$fulldomain" "$txtvalue" "")" || return 1
  return 0
}

####################  Private functions below ##################################

# Environment first, then what an earlier run saved. Each is checked before it is used or
# saved: account.conf keeps them in single quotes and acme.sh evaluates it, and the token goes
# into a header line.
_dnsapi_settings() {
  DNSAPI_URL="${DNSAPI_URL:-$(_readaccountconf_mutable DNSAPI_URL)}"
  DNSAPI_TOKEN="${DNSAPI_TOKEN:-$(_readaccountconf_mutable DNSAPI_TOKEN)}"
  DNSAPI_CA_BUNDLE="${DNSAPI_CA_BUNDLE:-$(_readaccountconf_mutable DNSAPI_CA_BUNDLE)}"
  DNSAPI_TIMEOUT="${DNSAPI_TIMEOUT:-120}"
  if [ -z "$DNSAPI_URL" ] || [ -z "$DNSAPI_TOKEN" ]; then
    _err "dnsapi: set DNSAPI_URL and DNSAPI_TOKEN (and DNSAPI_CA_BUNDLE for a private CA) once; they are saved for renewals"
    return 1
  fi
  case "$DNSAPI_TOKEN" in
    *[!a-zA-Z0-9._~+/=-]*)
      _err "dnsapi: DNSAPI_TOKEN holds characters no Bearer token has (RFC 6750: letters, digits, -._~+/ and trailing =)"
      return 1
      ;;
  esac
  case "$DNSAPI_URL" in
    http://* | https://*) ;;
    *)
      _err "dnsapi: DNSAPI_URL must start with https:// (or http://)"
      return 1
      ;;
  esac
  if [ "${DNSAPI_URL#http://}" != "$DNSAPI_URL" ] && ! _dnsapi_loopback "$DNSAPI_URL"; then
    _info "dnsapi: warning: DNSAPI_URL is plain http://, so the token crosses the network unencrypted; use https://"
  fi
  if _dnsapi_unsafe "$DNSAPI_URL"; then
    _err "dnsapi: DNSAPI_URL may not hold spaces, quotes, backslashes or \$"
    return 1
  fi
  if _dnsapi_unsafe "$DNSAPI_CA_BUNDLE"; then
    _err "dnsapi: DNSAPI_CA_BUNDLE may not hold spaces, quotes, backslashes or \$"
    return 1
  fi
  case "$DNSAPI_TIMEOUT" in
    "" | *[!0-9]* | 0)
      _err "dnsapi: DNSAPI_TIMEOUT must be a whole number of seconds"
      return 1
      ;;
  esac
  DNSAPI_URL="${DNSAPI_URL%/}"
  return 0
}

# True when the URL $1 names a loopback host: localhost, [::1], or an IPv4 address in 127/8.
_dnsapi_loopback() {
  _dnsapi_host="${1#*://}"
  _dnsapi_host="${_dnsapi_host%%[/?#]*}"
  case "$_dnsapi_host" in
    \[::1\] | \[::1\]:*) return 0 ;;
  esac
  _dnsapi_host="${_dnsapi_host%:*}"
  case "$_dnsapi_host" in
    localhost) return 0 ;;
    *[!0-9.]*) return 1 ;;
    127.*.*.*) return 0 ;;
  esac
  return 1
}

# True when $1 holds anything a shell quote or a command line could be broken by.
_dnsapi_unsafe() {
  case "$1" in
    *[!a-zA-Z0-9._~+/=:@%?\&\#,\;\[\]!*\(\)-]*) return 0 ;;
  esac
  return 1
}

# JSON body; quotes and backslashes escaped although acme.sh only passes names and base64url.
_dnsapi_body() {
  _dnsapi_fqdn="$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
  _dnsapi_value="$(printf '%s' "$2" | sed 's/\\/\\\\/g; s/"/\\"/g')"
  printf '{"fqdn":"%s","value":"%s"%s}' "$_dnsapi_fqdn" "$_dnsapi_value" "$3"
}

# _dnsapi_call METHOD BODY: send it, and turn every failure into an _err message. A 429 (over a
# rate limit) or a 503 (Vault unavailable, too many waits, a restart) changed nothing: sent again
# after the server's Retry-After, up to twice, when that is at most 30 seconds.
_dnsapi_call() {
  _dnsapi_tries=0
  while :; do
    _dnsapi_send "$1" "$2" || return 1
    case "$_dnsapi_status" in
      429 | 503) ;;
      *) break ;;
    esac
    _dnsapi_wait="$(grep -i '^Retry-After:' "$HTTP_HEADER" 2>/dev/null | tail -n 1 | tr -d '\r' | cut -d ':' -f 2 | tr -d ' ')"
    case "$_dnsapi_wait" in
      "" | *[!0-9]*) _dnsapi_wait=1 ;;
      ???*) break ;; # (too long to wait for, and to compare: sh's numbers end somewhere)
    esac
    _dnsapi_tries=$((_dnsapi_tries + 1))
    if [ "$_dnsapi_tries" -gt 2 ] || [ "$_dnsapi_wait" -gt 30 ]; then
      break
    fi
    _info "dnsapi: busy ($_dnsapi_status: $_dnsapi_message); trying again in ${_dnsapi_wait}s"
    _sleep "$_dnsapi_wait"
  done
  case "$_dnsapi_status" in
    2??)
      return 0
      ;;
    401)
      _err "dnsapi: DNSAPI_TOKEN was refused (401): $_dnsapi_message"
      ;;
    403)
      _err "dnsapi: this token may not change $fulldomain (403): $_dnsapi_message"
      ;;
    400)
      _err "dnsapi: request refused (400): $_dnsapi_message"
      ;;
    429)
      _err "dnsapi: too many requests (429): $_dnsapi_message"
      ;;
    504)
      _err "dnsapi: stored, but the DNS servers did not answer it in time (504): $_dnsapi_message"
      ;;
    5??)
      _err "dnsapi: server error ($_dnsapi_status): $_dnsapi_message"
      ;;
    "")
      _err "dnsapi: no HTTP answer from $DNSAPI_URL"
      ;;
    *)
      _err "dnsapi: unexpected HTTP $_dnsapi_status from $DNSAPI_URL: $_dnsapi_message"
      ;;
  esac
  return 1
}

# _dnsapi_send METHOD BODY: one request with acme.sh's own _post (curl or wget, acme.sh's proxy
# and CA settings); sets _dnsapi_status and _dnsapi_message. Fails (said with _err) only when no
# HTTP answer came: _post returns 0 on HTTP errors, so the status is read from $HTTP_HEADER.
_dnsapi_send() {
  _H1="Authorization: Bearer $DNSAPI_TOKEN" # (not exported: no child needs it in its environment)
  _H2="Accept: application/json"
  _H3=""
  _H4=""
  _H5=""
  # We run in acme.sh's subshell: what changes here changes our requests only.
  if [ -n "$DNSAPI_CA_BUNDLE" ]; then
    CA_BUNDLE="$DNSAPI_CA_BUNDLE"
    CA_PATH=""
  fi
  # At --debug 2 acme.sh makes curl trace every request header, the token's too, into a temp
  # file it never removes (and into its log after a failed transfer), and wget -d prints them:
  # our requests go out as at --debug 1. With a time limit, and one try (wget retries a 504),
  # so that a server that never answers cannot hold acme.sh.
  _dnsapi_debug="$DEBUG"
  if [ -n "$DEBUG" ] && [ "$DEBUG" -ge 2 ] 2>/dev/null; then
    DEBUG=1
  fi
  _resethttp
  _inithttp
  if [ -n "$_ACME_CURL" ]; then
    _ACME_CURL="$_ACME_CURL --max-time $DNSAPI_TIMEOUT "
  fi
  if [ -n "$_ACME_WGET" ]; then
    _ACME_WGET="$_ACME_WGET --timeout=$DNSAPI_TIMEOUT --tries=1 "
  fi
  if [ -n "$HTTP_HEADER" ]; then
    : >"$HTTP_HEADER" # a transfer that fails must not leave an earlier request's status behind
  fi
  _dnsapi_response="$(_post "$2" "$DNSAPI_URL/v1/records" "" "$1" "application/json")"
  _dnsapi_ret="$?"
  DEBUG="$_dnsapi_debug"
  _resethttp
  _debug2 _dnsapi_response "$_dnsapi_response"
  # wget exits non-zero on some HTTP errors (6 on a 401), so an HTTP status wins over the exit code.
  _dnsapi_status="$(grep -i '^HTTP/' "$HTTP_HEADER" 2>/dev/null | tail -n 1 | tr -d '\r' | cut -d ' ' -f 2)"
  _debug _dnsapi_status "$_dnsapi_status"
  if [ -z "$_dnsapi_status" ] && [ "$_dnsapi_ret" != "0" ]; then
    _err "dnsapi: cannot reach $DNSAPI_URL (curl/wget exit code $_dnsapi_ret)"
    return 1
  fi
  # (control characters dropped: whatever answered, its text goes to a terminal and a log)
  _dnsapi_message="$(printf '%s' "$_dnsapi_response" | _egrep_o '"message": *"[^"]*"' | cut -d '"' -f 4 | tr -d '\000-\037\177')"
  return 0
}
