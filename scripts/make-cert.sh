#!/usr/bin/env bash
# make-cert.sh DIR HOSTNAME...: a self-signed certificate for an HTTPS controller, made with the
# openssl command-line tool (no certificate crate in the project).
#
# Writes DIR/cert.pem (the certificate: give it to serve --tls-cert, and to workers and clients
# as --ca-file / WARP_CA_FILE) and DIR/key.pem (its private key, mode 600: serve --tls-key only).
# The certificate names every HOSTNAME (a name or an IP address) plus localhost and 127.0.0.1,
# and is valid for 825 days (WARP_CERT_DAYS overrides). It is an end-entity certificate that is
# its own trust anchor (basicConstraints CA:FALSE, as rustls requires of a server certificate).
#
# Example, on the head node:
#   scripts/make-cert.sh ~/.warp/tls "$(hostname -f)" "$(hostname -s)"
#   warp-controller serve --tls-cert ~/.warp/tls/cert.pem --tls-key ~/.warp/tls/key.pem ...
#   WARP_CA_FILE=~/.warp/tls/cert.pem warp-worker --controller https://"$(hostname -f)":7300 ...
set -euo pipefail
die() { echo "make-cert.sh: $*" >&2; exit 2; }
[ $# -ge 2 ] || die "usage: make-cert.sh DIR HOSTNAME... (the names workers use to reach the controller)"
command -v openssl >/dev/null || die "needs the openssl command-line tool"
dir=$1; shift
days=${WARP_CERT_DAYS:-825}
mkdir -p "$dir"
[ -e "$dir/key.pem" ] && die "$dir/key.pem exists; remove it first (a new key invalidates the old certificate)"

san=
add_name() {
    local kind=DNS
    if [[ $1 =~ ^[0-9.]+$ || $1 == *:* ]]; then kind=IP; fi
    case ",$san," in *",$kind:$1,"*) return ;; esac
    san="${san:+$san,}$kind:$1"
}
for h in "$@"; do
    [ -n "$h" ] || die "an empty HOSTNAME"
    add_name "$h"
done
add_name localhost
add_name 127.0.0.1

umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" -days "$days" -subj "/CN=$1" \
    -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null \
    || die "openssl failed to make the certificate"
chmod 600 "$dir/key.pem"
chmod 644 "$dir/cert.pem"
echo "wrote $dir/cert.pem and $dir/key.pem (mode 600) for $san, valid $days days"
