#!/usr/bin/env bash
# Runs a command inside a throwaway VM with Debian's 6.12 kernel (which has
# ublk_drv, nbd, btrfs and nfsd as modules), under QEMU's TCG emulation, with
# this machine's root filesystem shared read-only (virtme-ng). Writable
# places inside: /tmp, /var, /etc.
#
#   scripts/vm-run.sh COMMAND...    exit status is the command's
#
#   ZEROBLK_VM_KERNEL=/boot/vmlinuz-...   kernel to boot (default: newest 6.12)
#   ZEROBLK_VM_MEMORY=2G                  memory
#   ZEROBLK_VM_OUT=DIR                    a host directory the VM may write
set -euo pipefail
cd "$(dirname "$0")/.."

kernel="${ZEROBLK_VM_KERNEL:-$(ls /boot/vmlinuz-6.12* 2>/dev/null | sort -V | tail -n 1)}"
if [ -z "$kernel" ] || [ ! -f "$kernel" ]; then
    echo "no 6.12 kernel in /boot: run scripts/test.sh, or apt-get install linux-image-6.12-amd64" >&2
    exit 1
fi
command -v vng >/dev/null || { echo "virtme-ng is missing: pip install virtme-ng" >&2; exit 1; }

# /dev/kvm here is a paravirtual one stock kernels cannot use: emulate.
# The guest mounts fresh /tmp, /var/tmp and /run, so a checkout under one of
# them would vanish there: share the checkout explicitly, read-only.
exec vng --run "$kernel" --disable-kvm --cpus 2 --memory "${ZEROBLK_VM_MEMORY:-2G}" \
    --rodir "$PWD" ${ZEROBLK_VM_OUT:+--rwdir "$ZEROBLK_VM_OUT"} --cwd "$PWD" -- "$*"
