#!/usr/bin/env bash
# The kernel's NBD client over TLS: Debian's nbd-client (built with
# GnuTLS) does the TLS handshake and relays between the kernel and the
# encrypted socket. zeroblk serve requires a client certificate; data
# written through /dev/nbd0 reads back after a reconnect. (Debian 12's
# nbd-client 3.24 takes -certfile but not its short form -F.)
. "$(dirname "$0")/lib.sh"

modprobe nbd nbds_max=2
"$ZEROBLK" volume create t --size 256M

step "certificates: a CA, a server certificate for 127.0.0.1, a client certificate"
cd "$WORK"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca-cert.pem -days 2 -subj "/CN=vm CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for name in server client; do
    openssl req -new "${ec[@]}" -keyout "$name-key.pem" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
done
printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' >server.ext
printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >client.ext
for name in server client; do
    openssl x509 -req -in "$name.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
        -extfile "$name.ext" -out "$name-cert.pem" 2>/dev/null
done
chmod 600 ./*-key.pem

tls=(--tls-cert server-cert.pem --tls-key server-key.pem --tls-client-ca ca-cert.pem)
connect() {
    nbd-client 127.0.0.1 10809 /dev/nbd0 -N t -b 4096 -t 300 -x \
        -cacertfile ca-cert.pem -certfile client-cert.pem -keyfile client-key.pem "$@"
}

step "without a client certificate: refused"
start_serve 10809 t "${tls[@]}"
if nbd-client 127.0.0.1 10809 /dev/nbd0 -N t -b 4096 -x -A ca-cert.pem 2>/dev/null; then
    fail "nbd-client got in without a client certificate"
fi
nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true

step "with one: write, disconnect, reconnect, read back"
connect || fail "nbd-client could not connect over TLS"
[ "$(blockdev --getsize64 /dev/nbd0)" = 268435456 ] || fail "wrong device size"
head -c 32M /dev/urandom >blob
dd if=blob of=/dev/nbd0 bs=1M oflag=direct status=none || fail "writing through TLS"
nbd-client -d /dev/nbd0
connect || fail "nbd-client could not reconnect over TLS"
cmp <(dd if=/dev/nbd0 bs=1M count=32 iflag=direct status=none) blob || fail "the data read back differs"
nbd-client -d /dev/nbd0
stop_serve
echo "nbd_kernel_tls: ok"
