#!/bin/sh
# Check an evidence package made by `dockd export` with standard tools only:
# POSIX sh, coreutils (sha256sum, base64, tail, cut, sort), sed, grep, find, diff, OpenSSL 3.
# usage: sh verify-package.sh PACKAGE TRUSTED_KEY.pub      (exit status 0 = all checks passed)
set -eu
key=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
cd "$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. The key you trust (got from the dock, not from the package). Its key id is
#    "ed25519:" + the first 32 hex digits of SHA-256 over the raw 32-byte public key.
kid=ed25519:$(openssl pkey -pubin -in "$key" -outform DER | tail -c 32 | sha256sum | cut -c1-32)
echo "trusted key: $kid"

# 2. The list of every file in the package is signed by that key (raw Ed25519 signature).
openssl pkeyutl -verify -pubin -inkey "$key" -rawin \
    -in _export/SHA256SUMS -sigfile _export/SHA256SUMS.sig

# 3. Every listed file is there with that SHA-256, and the package holds nothing else.
sha256sum --check --strict --quiet _export/SHA256SUMS
cut -c67- _export/SHA256SUMS | sort > "$tmp/listed"
find . -type f ! -path ./_export/SHA256SUMS ! -path ./_export/SHA256SUMS.sig \
    | sed 's|^\./||' | sort > "$tmp/present"
diff "$tmp/listed" "$tmp/present"
echo "files: $(wc -l < "$tmp/listed") match the signed list"

# 4. Each manifest, revision and audit segment has its own signature document
#    (JSON; "signature" is base64 of the raw Ed25519 signature of the file without ".sig").
find . -name '*.sig' ! -name SHA256SUMS.sig | sort > "$tmp/sigs"
while read -r sig; do
    if ! grep -q "\"key_id\":\"$kid\"" "$sig"; then
        echo "$sig: signed by another key (see _export/keys.txt)"
        continue
    fi
    sed -E 's/.*"signature":"([^"]+)".*/\1/' "$sig" | base64 -d > "$tmp/sig.bin"
    openssl pkeyutl -verify -pubin -inkey "$key" -rawin \
        -in "${sig%.sig}" -sigfile "$tmp/sig.bin" > /dev/null
    echo "$sig: signature OK"
done < "$tmp/sigs"

# 5. Every exported clip has the SHA-256 its signed manifest gives it.
find . -name manifest.json ! -path './_*' | sort > "$tmp/manifests"
while read -r m; do
    d=$(dirname "$m")
    grep -o '"name":"[^"]*","original_path":"[^"]*","sha256":"[0-9a-f]\{64\}"' "$m" \
        | sed -E 's/^"name":"([^"]*)",.*"sha256":"([0-9a-f]{64})"$/\2  \1/' > "$tmp/clips"
    while read -r sum name; do
        if [ ! -f "$d/$name" ]; then
            echo "$d/$name: not exported (withheld)"
            continue
        fi
        echo "$sum  $d/$name" | sha256sum --check --quiet
        echo "$d/$name: matches its manifest"
    done < "$tmp/clips"
done < "$tmp/manifests"
echo "package verified with $kid"
