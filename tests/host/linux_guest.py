"""A Linux guest for side-by-side figures: Debian's cloud kernel with a tiny initramfs that runs
the same scenarios as our kernel (`reclaim`: touch 1 GiB, free it, idle; `balloon`: wait
for the host; `phased`: the footprint benchmark's phases, by phased.c, a static program built
here with the host's `gcc -static`), printing the same EVENT (and HELD) lines.

    python3 tests/host/linux_guest.py DIR     # fetch and build into DIR (apt-get download)

Nothing of Linux is kept in the repository: the kernel and busybox come from Debian's packages
when this runs. `reclaim_bench.py --linux DIR` and `footprint_bench.py --linux DIR` use the
result.
"""

import glob
import gzip
import os
import subprocess
import sys

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
mount -t tmpfs -o size=1600m tmpfs /dev/shm
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon; do
    insmod /lib/modules/$m.ko
done
scenario=$(sed -n 's/.*scenario=\([a-z_]*\).*/\1/p' /proc/cmdline)
idle=$(sed -n 's/.*idle_s=\([0-9]*\).*/\1/p' /proc/cmdline)
echo 'EVENT {"name":"start","t_ns":0}'
if [ "$scenario" = reclaim ]; then
    # tmpfs pages: written (touched) by dd, freed to the buddy allocator by rm.
    dd if=/dev/zero of=/dev/shm/hog bs=1M count=1024 2>/dev/null
    echo 'EVENT {"name":"touched","t_ns":0,"mib":1024}'
    rm /dev/shm/hog
    echo 'EVENT {"name":"freed","t_ns":0,"mib":1024}'
    echo 'EVENT {"name":"idle","t_ns":0}'
    sleep ${idle:-8}
    echo 'EVENT {"name":"done","t_ns":0}'
elif [ "$scenario" = phased ]; then
    echo "transparent hugepages: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
    /bin/phased
    echo "EVENT {\"name\":\"finished\",\"t_ns\":0,\"status\":$?}"
else
    echo 'EVENT {"name":"ready","t_ns":0}'
    sleep ${idle:-60}
fi
poweroff -f
"""

PHASED_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "phased.c")

MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_balloon"]


def newc(entries):
    """A cpio archive in the newc format: entries are (path, mode, data or None for a dir)."""
    out = bytearray()
    def add(name, mode, data):
        name_bytes = name.encode() + b"\0"
        header = "070701" + "".join(f"{value:08x}" for value in (
            len(out) // 4 + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0))
        out.extend(header.encode() + name_bytes)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
    for name, mode, data in entries:
        add(name, mode, data if data is not None else b"")
    add("TRAILER!!!", 0, b"")
    return bytes(out)


def prepare(directory):
    """Downloads Debian's cloud kernel and busybox-static and builds DIR/vmlinuz, DIR/initrd.gz."""
    os.makedirs(directory, exist_ok=True)
    debs = os.path.join(directory, "debs")
    os.makedirs(debs, exist_ok=True)
    depends = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                             capture_output=True, text=True, check=True).stdout
    image = next(line.split()[-1] for line in depends.splitlines()
                 if "Depends:" in line and "linux-image-" in line)
    subprocess.run(["apt-get", "download", image, "busybox-static"], cwd=debs, check=True)
    root = os.path.join(directory, "root")
    for deb in glob.glob(os.path.join(debs, "*.deb")):
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    vmlinuz = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))[0]
    os.replace(vmlinuz, os.path.join(directory, "vmlinuz"))
    entries = [(d, 0o40755, None) for d in ("bin", "proc", "sys", "dev", "lib", "lib/modules")]
    with open(os.path.join(root, "bin", "busybox"), "rb") as f:
        entries.append(("bin/busybox", 0o100755, f.read()))
    for module in MODULES:
        path = glob.glob(os.path.join(root, "lib/modules/*/kernel/drivers/virtio", module + ".ko"))
        with open(path[0], "rb") as f:
            entries.append((f"lib/modules/{module}.ko", 0o100644, f.read()))
    phased = os.path.join(directory, "phased")
    subprocess.run(["gcc", "-static", "-O2", "-pthread", "-o", phased, PHASED_C], check=True)
    with open(phased, "rb") as f:
        entries.append(("bin/phased", 0o100755, f.read()))
    entries.append(("init", 0o100755, INIT.encode()))
    with open(os.path.join(directory, "initrd.gz"), "wb") as f:
        f.write(gzip.compress(newc(entries)))
    return guest_files(directory)


def guest_files(directory):
    """(kernel, extra cmdline words, extra environment) for booting the Linux guest."""
    kernel = os.path.join(directory, "vmlinuz")
    initrd = os.path.join(directory, "initrd.gz")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        raise FileNotFoundError(f"no Linux guest in {directory}: run linux_guest.py {directory}")
    return kernel, ["console=ttyS0", "quiet"], {"QEMU_EXTRA": f"-initrd {initrd}"}


if __name__ == "__main__":
    print(prepare(sys.argv[1] if len(sys.argv) > 1 else "linux-guest"))
