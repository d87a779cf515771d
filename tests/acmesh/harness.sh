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
_sleep() { sleep "$1"; } # (acme.sh's, when not interactive)

HTTP_HEADER="$(dirname "$ACCOUNT_CONF_PATH")/http.header"
__HTTP_INITIALIZED=""
_ACME_CURL=""
_ACME_WGET=""
_CURL_DUMP=""

_resethttp() {
  __HTTP_INITIALIZED=""
  _ACME_CURL=""
  _ACME_WGET=""
  ACME_HTTP_NO_REDIRECTS=""
}

# As acme.sh 3.1.4's: the command lines are built once and kept in _ACME_CURL / _ACME_WGET
# (a hook may add to them after calling this); at DEBUG >= 2 curl traces every request, its
# headers included, into a temp file acme.sh never removes, and wget gets -d.
_inithttp() {
  if [ -z "$HTTP_HEADER" ] || ! touch "$HTTP_HEADER"; then
    HTTP_HEADER="$(mktemp)"
  fi
  if [ -n "$__HTTP_INITIALIZED" ] && [ -n "$_ACME_CURL$_ACME_WGET" ]; then
    return 0
  fi
  if [ -z "$_ACME_CURL" ] && _exists curl; then
    _ACME_CURL="curl --silent --dump-header $HTTP_HEADER "
    if [ -z "${ACME_HTTP_NO_REDIRECTS:-}" ]; then
      _ACME_CURL="$_ACME_CURL -L "
    fi
    if [ -n "$DEBUG" ] && [ "$DEBUG" -ge 2 ]; then
      _CURL_DUMP="$(mktemp)"
      _ACME_CURL="$_ACME_CURL --trace-ascii $_CURL_DUMP "
    fi
    if [ -n "${CA_PATH:-}" ]; then
      _ACME_CURL="$_ACME_CURL --capath $CA_PATH "
    elif [ -n "${CA_BUNDLE:-}" ]; then
      _ACME_CURL="$_ACME_CURL --cacert $CA_BUNDLE "
    fi
    _ACME_CURL="$_ACME_CURL -g "
  fi
  if [ -z "$_ACME_WGET" ] && _exists wget; then
    _ACME_WGET="wget -q"
    if [ -n "${ACME_HTTP_NO_REDIRECTS:-}" ]; then
      _ACME_WGET="$_ACME_WGET --max-redirect 0 "
    fi
    if [ -n "$DEBUG" ] && [ "$DEBUG" -ge 2 ]; then
      _ACME_WGET="$_ACME_WGET -d "
    fi
    if [ -n "${CA_PATH:-}" ]; then
      _ACME_WGET="$_ACME_WGET --ca-directory=$CA_PATH "
    elif [ -n "${CA_BUNDLE:-}" ]; then
      _ACME_WGET="$_ACME_WGET --ca-certificate=$CA_BUNDLE "
    fi
    _ACME_WGET="$_ACME_WGET --content-on-error "
  fi
  __HTTP_INITIALIZED=1
}

_post() {
  body="$1"
  url="$2"
  method="${4:-POST}"
  content_type="${5:-}"
  _debug2 "body" "$body"
  _inithttp
  if [ -n "$_ACME_CURL" ] && [ "${ACME_USE_WGET:-0}" = "0" ]; then
    _debug "_CURL" "$_ACME_CURL"
    # shellcheck disable=SC2086
    response="$($_ACME_CURL --user-agent "$USER_AGENT" -X "$method" -H "Content-Type: $content_type" \
      -H "${_H1:-}" -H "${_H2:-}" -H "${_H3:-}" -H "${_H4:-}" -H "${_H5:-}" --data "$body" "$url")"
    ret=$?
    if [ "$ret" != "0" ]; then
      _err "Please refer to https://curl.haxx.se/libcurl/c/libcurl-errors.html for error code: $ret"
      if [ -n "$DEBUG" ] && [ "$DEBUG" -ge 2 ]; then
        _err "Here is the curl dump log:"
        _err "$(cat "$_CURL_DUMP")"
      fi
    fi
  else
    _debug "_WGET" "$_ACME_WGET"
    # _H5 first, as acme.sh does: an empty --header "" makes wget drop every header before it,
    # so the unset high-numbered ones must come before the set ones.
    # shellcheck disable=SC2086
    response="$($_ACME_WGET -S -O - --user-agent="$USER_AGENT" \
      --header "${_H5:-}" --header "${_H4:-}" --header "${_H3:-}" --header "${_H2:-}" --header "${_H1:-}" \
      --header "Content-Type: $content_type" --method "$method" --body-data="$body" "$url" 2>"$HTTP_HEADER")"
    ret=$?
    if [ "$ret" = "8" ]; then ret=0; fi # wget's "server issued an error response": the body is read later
    if [ "$ret" != "0" ]; then
      _err "Please refer to https://www.gnu.org/software/wget/manual/html_node/Exit-Status.html for error code: $ret"
    fi
    if _contains "$_ACME_WGET" " -d "; then
      cat "$HTTP_HEADER" >&2 # acme.sh shows wget's debug output, then keeps only the headers
      sed -i '/^[^ ][^ ]/d; /^ *$/d' "$HTTP_HEADER"
    fi
    sed -i 's/^  //' "$HTTP_HEADER"
  fi
  printf '%s' "$response"
  return "$ret"
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
