#!/bin/sh
# Regenerate the TLS test certificates in tests/tls/ (run once; the PEM files are committed,
# and the tests never run openssl). Everything is valid for 100 years and uses EC P-256 keys
# (fast handshakes). Usage: sh tools/make_test_certs.sh [DIR]   (default: tests/tls)
set -eu
DIR=${1:-$(dirname "$0")/../tests/tls}
DAYS=36500
mkdir -p "$DIR"
cd "$DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# A CA, and another one that the server does not trust (a "wrong CA" for client certs).
for ca in ca other-ca; do
    key "$ca.key"
    openssl req -x509 -new -key "$ca.key" -days $DAYS -sha256 -out "$ca.pem" \
        -subj "/O=minisoup tests/CN=minisoup test $ca" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
done

# issue NAME CA SUBJECT EXTENSIONS: NAME.key and NAME.pem signed by CA.
issue() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$3" -out "$TMP/$1.csr"
    printf '%s\n' "$4" > "$TMP/$1.ext"
    openssl x509 -req -in "$TMP/$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -CAserial "$TMP/$2.srl" -days $DAYS -sha256 -extfile "$TMP/$1.ext" -out "$1.pem"
}

issue server ca "/O=minisoup tests/CN=localhost" \
"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
# The same name again, another key: the renewed certificate of the SIGHUP reload test.
issue server2 ca "/O=minisoup tests/CN=localhost" \
"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
issue client ca "/O=minisoup tests/CN=test client" \
"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
issue other-client other-ca "/O=minisoup tests/CN=untrusted client" \
"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

# The server's key with a password ("minisoup"), for set_tls_certificate(..., password=).
openssl pkey -in server.key -aes256 -passout pass:minisoup -out server-encrypted.key
# Certificate and key in one file (set_tls_certificate(certfile) alone).
cat server.pem server.key > server-combined.pem
# The CA keys are not needed by the tests: keep them out of the repository.
rm -f ca.key other-ca.key
