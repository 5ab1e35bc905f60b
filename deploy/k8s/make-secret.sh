#!/bin/sh
# Prints the Secret edge-suite-certs (every *.crt and *.key in DIR, default build/certs, as made
# by deploy/certs.sh or your own CA) for kubectl apply. Keys never go into the repository.
#   deploy/k8s/make-secret.sh build/certs | kubectl apply -f -
set -eu
DIR=${1:-build/certs}
[ -f "$DIR/ca.crt" ] || { echo "make-secret: $DIR/ca.crt missing (deploy/certs.sh $DIR)" >&2; exit 1; }
printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: edge-suite-certs\n  namespace: edge-suite\ntype: Opaque\ndata:\n'
for f in "$DIR"/*.crt "$DIR"/*.key; do
    [ -f "$f" ] || continue
    case $(basename "$f") in rogue*) continue ;; esac
    printf '  %s: %s\n' "$(basename "$f")" "$(base64 -w0 "$f")"
done
