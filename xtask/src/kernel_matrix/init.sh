#!/bin/busybox sh
# Stage 1 of the kernel matrix's guest, /init of its initramfs (xtask/src/kernel_matrix/).
# Loads the modules that 9p and overlayfs need (listed in /modules/order, dependencies
# first), mounts the host's root read-only over virtio-9p under a tmpfs overlay, and hands
# over to busybox init in that root, which runs /kmatrix/run.sh (stage 2).
/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() {
    echo "kmatrix-init: $*" >&2
    poweroff -f
}
while read -r module; do
    insmod "/modules/$module" || fail "insmod $module failed"
done < /modules/order
mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host ||
    fail "cannot mount the host's root (9p tag hostroot)"
mount -t tmpfs -o mode=755 tmpfs /rw || fail "tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    fail "cannot mount the overlay over the host's root"
mkdir -p /newroot/kmatrix/bin /newroot/kmatrix/results
cp /bin/busybox /newroot/kmatrix/bin/busybox
cp /run.sh /newroot/kmatrix/run.sh
for applet in init sh modprobe poweroff; do
    ln -s busybox "/newroot/kmatrix/bin/$applet"
done
printf '::sysinit:/kmatrix/bin/sh /kmatrix/run.sh\n' > /newroot/etc/inittab
for fs in proc sys dev; do
    mount --move "/$fs" "/newroot/$fs" || fail "moving /$fs into the new root"
done
exec switch_root /newroot /kmatrix/bin/init
