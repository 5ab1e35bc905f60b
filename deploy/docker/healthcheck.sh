#!/bin/bash
# Container health check with what a slim image has (bash, no curl): GET /healthz on the admin
# listener named in the config file (or in $EDGE_ADMIN, host:port). Exit 0 only on HTTP 200.
# Usage: edge-healthcheck /etc/edge/<role>.yaml
set -u
conf=${1:-}
addr=${EDGE_ADMIN:-}
if [ -z "$addr" ] && [ -r "$conf" ]; then
    # admin: {listen: 10.0.0.1:8080}  or  admin:\n  listen: 10.0.0.1:8080
    addr=$(sed -n 's/^admin: *{ *listen: *\([^ ,}]*\).*/\1/p' "$conf" | head -1)
    [ -n "$addr" ] || addr=$(sed -n '/^admin:/,/^[^ ]/s/^ \{1,\}listen: *\([^ #]*\).*/\1/p' "$conf" | head -1)
fi
if [ -z "$addr" ]; then
    echo "healthcheck: no admin listen address in ${conf:-(no config given)}" >&2
    exit 1
fi
host=${addr%:*}
port=${addr##*:}
host=${host#[}
host=${host%]}
[ "$host" = "0.0.0.0" ] && host=127.0.0.1
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$addr" >&3
IFS= read -r -t 3 status <&3 || exit 1
case $status in
"HTTP/1."?" 200"*) exit 0 ;;
esac
echo "healthcheck: $addr/healthz answered: ${status%$'\r'}" >&2
exit 1
