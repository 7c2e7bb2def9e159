#!/usr/bin/env bash
# Boots a kernel ELF in QEMU and exits with the kernel's status. Cargo's runner for every kernel
# binary (.cargo/config.toml): `cargo run` and each test kernel of `cargo test` come through here.
#
#   run-qemu.sh KERNEL.elf [key=value ...]      the words after the path become the kernel command line
#                                               (at most 4095 bytes: QEMU's PVH buffer holds no more)
#
# Environment:
#   QEMU_ACCEL=tcg|kvm   accelerator (default tcg; kvm on these machines is a slow nested kind)
#   QEMU_MEM=2G          guest memory (default 2G; 6G for the high_memory test kernel)
#   QEMU_TIMEOUT=SEC     time limit (default: 600 s for test kernels, none for cargo run)
#   QEMU_BALLOON=on|off  attach virtio-balloon-pci (default on)
#   QEMU_REPORTING=on|off  the balloon's free-page-reporting property (default on)
#   QEMU_QMP=PATH        QMP socket path (default: a fresh one under $TMPDIR, printed at start)
#   QEMU_EXTRA="..."     more QEMU arguments
#   QEMU_PIDFILE=PATH    write QEMU's pid there (host-side checks read its resident memory)
#
# Host-observed test kernels (tests/kernels/host_*.rs) are not booted here directly: their
# driver, tests/host/<name>.py, boots them (through this script, several times over) and checks
# what the host sees. Set RUN_QEMU_DIRECT=1 to boot one by hand.
#
# Exit status: 0 when the kernel exits with success, 1 when it reports failure, 2 when QEMU could
# not run it (or it died without reporting: a triple fault, a crash), 124 on the time limit.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 KERNEL.elf [key=value ...]" >&2
    exit 2
fi
kernel=$1
shift
cmdline="$*"
# QEMU's PVH loader copies the command line into a 4 KiB buffer with no bound check: a longer
# one overwrites the boot information behind it (the kernel would find no sane memory map).
cmdline_bytes=$(printf %s "$cmdline" | LC_ALL=C wc -c)
if [ "$cmdline_bytes" -gt 4095 ]; then
    echo "run-qemu.sh: the kernel command line is $cmdline_bytes bytes; QEMU's PVH boot takes at most 4095 (a longer one overwrites the memory map). Shorten it." >&2
    exit 2
fi

name=$(basename "$kernel")
name=${name%-*}
driver="$(dirname "$0")/tests/host/$name.py"
case "$name" in
    host_*)
        if [ -z "${RUN_QEMU_DIRECT:-}" ] && [ -f "$driver" ]; then
            exec python3 "$driver" "$kernel" "$@"
        fi ;;
esac

qemu=qemu-system-x86_64
if ! command -v "$qemu" >/dev/null 2>&1; then
    echo "run-qemu.sh: $qemu not found. Install it with: apt-get install qemu-system-x86" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-qemu.sh: running as root: installing qemu-system-x86 now" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >&2
    fi
    command -v "$qemu" >/dev/null 2>&1 || exit 2
fi

# Test kernels that test a memory size boot with it unless QEMU_MEM says otherwise:
# high_memory needs RAM above 4 GiB (QEMU's q35 puts RAM there from -m 2816M on).
mem=${QEMU_MEM:-2G}
case "$name" in
    high_memory) mem=${QEMU_MEM:-6G} ;;
esac

accel=${QEMU_ACCEL:-tcg}
case "$accel" in
    kvm)
        if [ ! -w /dev/kvm ]; then
            echo "run-qemu.sh: QEMU_ACCEL=kvm but /dev/kvm is not usable" >&2
            exit 2
        fi
        # kvm_pvm here rejects -cpu host (it cannot set IA32_ARCH_CAPABILITIES).
        cpu=host,-arch-capabilities ;;
    tcg) cpu=max ;;
    *) echo "run-qemu.sh: QEMU_ACCEL must be tcg or kvm, not '$accel'" >&2; exit 2 ;;
esac

is_test=0
case "$kernel" in */deps/*) is_test=1 ;; esac
timeout_s=${QEMU_TIMEOUT:-}
if [ -z "$timeout_s" ] && [ $is_test = 1 ]; then timeout_s=600; fi

qmp=${QEMU_QMP:-}
qmp_dir=
if [ -z "$qmp" ]; then
    qmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/run-qemu.XXXXXX")
    qmp=$qmp_dir/qmp.sock
fi
cleanup() { [ -n "$qmp_dir" ] && rm -rf "$qmp_dir"; return 0; }
trap cleanup EXIT

args=(
    -machine q35 -accel "$accel" -cpu "$cpu" -m "$mem"
    -nodefaults -display none -no-reboot
    -serial stdio
    -device isa-debug-exit,iobase=0xf4,iosize=0x04
    -qmp "unix:$qmp,server=on,wait=off"
    -kernel "$kernel"
)
if [ "${QEMU_BALLOON:-on}" = on ]; then
    args+=(-device "virtio-balloon-pci,id=balloon0,free-page-reporting=${QEMU_REPORTING:-on},deflate-on-oom=on,guest-stats-polling-interval=1")
fi
[ -n "$cmdline" ] && args+=(-append "$cmdline")
[ -n "${QEMU_PIDFILE:-}" ] && args+=(-pidfile "$QEMU_PIDFILE")
# shellcheck disable=SC2206
[ -n "${QEMU_EXTRA:-}" ] && args+=(${QEMU_EXTRA})

echo "run-qemu.sh: $(basename "$kernel") accel=$accel mem=$mem qmp=$qmp${cmdline:+ cmdline='$cmdline'}" >&2
set +e
if [ -n "$timeout_s" ]; then
    timeout --foreground -k 5 "$timeout_s" "$qemu" "${args[@]}" </dev/null
else
    "$qemu" "${args[@]}"
fi
status=$?
set -e

case $status in
    33) exit 0 ;;
    35) exit 1 ;;
    124) echo "run-qemu.sh: $(basename "$kernel") did not finish within ${timeout_s}s" >&2; exit 124 ;;
    0) echo "run-qemu.sh: QEMU exited without a status from the kernel (triple fault or shutdown)" >&2; exit 2 ;;
    *) echo "run-qemu.sh: QEMU failed with status $status" >&2; exit 2 ;;
esac
