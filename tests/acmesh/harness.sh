#!/bin/sh
# A stand-in for acme.sh 3.x around one DNS API hook, for tests (acme.sh itself is in no package
# registry here). It reproduces what a hook can see and rely on, written from reading acme.sh 3.1:
#   - the hook file is sourced in a subshell, then `<name>_add FULLDOMAIN TXTVALUE` (or _rm) runs;
#   - _post BODY URL NEEDBASE64 METHOD CONTENT_TYPE runs curl (or wget with ACME_USE_WGET=1)
#     WITHOUT --fail: it returns the transfer's exit code, 0 even on HTTP 4xx/5xx; the response
#     headers land in $HTTP_HEADER; request headers come from $_H1..$_H5; CA_BUNDLE becomes
#     --cacert when http is (re)initialised, which _resethttp forces;
#   - HTTP_HEADER is a fixed file set up front (acme.sh's _initpath: $LE_CONFIG_HOME/http.header),
#     so it survives _post running inside a command substitution;
#   - _readaccountconf_mutable K / _saveaccountconf_mutable K V keep `SAVED_K='V'` lines in
#     $ACCOUNT_CONF_PATH, so a later run without the environment variables finds them.
#
# Usage: harness.sh HOOK_FILE add|rm FULLDOMAIN TXTVALUE
#   env: ACCOUNT_CONF_PATH (default ./account.conf), ACME_USE_WGET=1, DEBUG=1|2
set -u

hook_file="$1"
action="$2"
fulldomain="$3"
txtvalue="$4"
ACCOUNT_CONF_PATH="${ACCOUNT_CONF_PATH:-$(pwd)/account.conf}"
USER_AGENT="acme.sh-harness/3"
DEBUG="${DEBUG:-}"

_log() { printf '[harness] %s\n' "$*" >&2; }
_info() { _log "$*"; }
_err() { _log "ERROR: $*"; return 1; }
_debug() { if [ -n "$DEBUG" ]; then _log "debug: $*"; fi; }
_debug2() { if [ -n "$DEBUG" ] && [ "$DEBUG" -ge 2 ]; then _log "debug2: $*"; fi; }
_exists() { command -v "$1" >/dev/null 2>&1; }
_contains() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
_egrep_o() { grep -E -o -e "$1" 2>/dev/null; }

HTTP_HEADER="$(dirname "$ACCOUNT_CONF_PATH")/http.header"
__http_ready=""
_curl_opts=""

_resethttp() { __http_ready=""; }

_inithttp() {
  if [ -z "$HTTP_HEADER" ] || ! touch "$HTTP_HEADER"; then
    HTTP_HEADER="$(mktemp)"
  fi
  if [ -n "$__http_ready" ]; then
    return 0
  fi
  _curl_opts=""
  if [ -n "${CA_PATH:-}" ]; then
    _curl_opts="--capath $CA_PATH"
  elif [ -n "${CA_BUNDLE:-}" ]; then
    _curl_opts="--cacert $CA_BUNDLE"
  fi
  __http_ready=1
}

_post() {
  body="$1"
  url="$2"
  method="${4:-POST}"
  content_type="${5:-}"
  _inithttp
  if [ "${ACME_USE_WGET:-0}" = "1" ]; then
    wget_ca=""
    if [ -n "${CA_BUNDLE:-}" ]; then wget_ca="--ca-certificate=$CA_BUNDLE"; fi
    # _H5 first, as acme.sh does: an empty --header "" makes wget drop every header before it,
    # so the unset high-numbered ones must come before the set ones.
    # shellcheck disable=SC2086
    response="$(wget -q -S -O - --content-on-error $wget_ca --user-agent="$USER_AGENT" \
      --header "${_H5:-}" --header "${_H4:-}" --header "${_H3:-}" --header "${_H2:-}" --header "${_H1:-}" \
      --header "Content-Type: $content_type" --method "$method" --body-data="$body" "$url" 2>"$HTTP_HEADER")"
    ret=$?
    if [ "$ret" = "8" ]; then ret=0; fi # wget's "server issued an error response": the body is read later
    sed -i 's/^  //' "$HTTP_HEADER"
  else
    # shellcheck disable=SC2086
    response="$(curl --silent --dump-header "$HTTP_HEADER" -L -g $_curl_opts --user-agent "$USER_AGENT" \
      -X "$method" -H "Content-Type: $content_type" \
      -H "${_H1:-}" -H "${_H2:-}" -H "${_H3:-}" -H "${_H4:-}" -H "${_H5:-}" --data "$body" "$url")"
    ret=$?
  fi
  if [ "$ret" != "0" ]; then
    _err "transfer failed with exit code $ret"
  fi
  printf '%s' "$response"
  return "$ret"
}

_get() {
  _inithttp
  # shellcheck disable=SC2086
  curl --silent --dump-header "$HTTP_HEADER" -L -g $_curl_opts --user-agent "$USER_AGENT" \
    -H "${_H1:-}" -H "${_H2:-}" -H "${_H3:-}" -H "${_H4:-}" -H "${_H5:-}" "$1"
}

_readaccountconf_mutable() {
  [ -f "$ACCOUNT_CONF_PATH" ] || return 0
  line="$(grep "^SAVED_$1=" "$ACCOUNT_CONF_PATH" | tail -n 1)"
  [ -n "$line" ] || return 0
  (eval "$line" && eval "printf '%s' \"\$SAVED_$1\"")
}

_saveaccountconf_mutable() {
  if [ ! -f "$ACCOUNT_CONF_PATH" ]; then
    touch "$ACCOUNT_CONF_PATH"
    chmod 600 "$ACCOUNT_CONF_PATH"
  fi
  sed -i "/^SAVED_$1=/d" "$ACCOUNT_CONF_PATH" # edited in place, keeping its mode
  printf "SAVED_%s='%s'\n" "$1" "$2" >>"$ACCOUNT_CONF_PATH"
}

hook_name="$(basename "$hook_file" .sh)"
(
  # shellcheck disable=SC1090 # the hook under test is given on the command line
  if ! . "$hook_file"; then
    _err "cannot load $hook_file"
    exit 1
  fi
  command="${hook_name}_${action}"
  if ! _exists "$command"; then
    _err "$hook_file does not define $command"
    exit 1
  fi
  "$command" "$fulldomain" "$txtvalue"
)
