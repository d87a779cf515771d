#!/bin/sh
# lego's exec provider runs EXEC_PATH with "present|cleanup FQDN VALUE"; hand that to dnsapi.
#   EXEC_PATH=/path/to/hooks/lego-exec.sh DNSAPI_URL=... DNSAPI_TOKEN=... lego --dns exec --dns.disable-cp ...
# "--": a base64url value may start with "-", which must not be taken for an option.
exec dnsapi lego "$1" -- "$2" "$3"
