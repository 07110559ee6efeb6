#!/usr/bin/env bash
# Idempotent set-up for dockd on Debian: system tools, then a virtualenv with dockd.
#   scripts/setup.sh          runtime (demo)
#   scripts/setup.sh test     runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-run}"
PY="${PYTHON:-python3}"

need_apt=()
command -v ffmpeg   >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v ffprobe  >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v exiftool >/dev/null 2>&1 || need_apt+=(libimage-exiftool-perl)
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# a CJK font so the kiosk page (and its screenshots) can show Chinese
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need_apt+=(fonts-wqy-microhei)
if [ "$want" = test ]; then
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
    command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
    command -v tmux     >/dev/null 2>&1 || need_apt+=(tmux)
    [ -x /usr/sbin/sshd ]                 || need_apt+=(openssh-server openssh-client)
    # real components the tests drive: udevadm and systemd-analyze (unit files, udev rule),
    # fsck.vfat/fsck.exfat (read-only checks), OpenSSH (SFTP target), Chromium (web page)
    command -v udevadm          >/dev/null 2>&1 || need_apt+=(udev)
    command -v systemd-analyze  >/dev/null 2>&1 || need_apt+=(systemd)
    command -v fsck.vfat        >/dev/null 2>&1 || need_apt+=(dosfstools)
    command -v fsck.exfat       >/dev/null 2>&1 || need_apt+=(exfatprogs)
    # recorder images (FAT32/exFAT) built with mtools and mounted through FUSE, as the mount
    # helper does where the kernel has no vfat/exfat driver
    command -v mcopy            >/dev/null 2>&1 || need_apt+=(mtools)
    command -v fusefat          >/dev/null 2>&1 || need_apt+=(fusefat)
    [ -x /sbin/mount.exfat-fuse ] || [ -x /usr/sbin/mount.exfat-fuse ] || need_apt+=(exfat-fuse)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    echo "setup: installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.dockd-$want-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    echo "setup: installing dockd and its Python packages into .venv ($want)"
    log=.venv/pip-install.log
    extra=""
    [ "$want" = test ] && extra="[test]"
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e ".$extra"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above, also in $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
