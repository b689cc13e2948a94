#!/kmatrix/bin/sh
# Stage 2 of the kernel matrix's guest, run by busybox init in the overlay root (see init.sh).
# Mounts what the privileged tests expect of a node (proc, sys, cgroup2, bpffs, tmpfs on /tmp
# and /run), makes the unpacked kernel image's modules loadable, then runs each line of the
# plan the host wrote to the results folder: `name<TAB>working dir<TAB>command`, output to
# <name>.out and exit status to <name>.rc, as each finishes. Powers off at the end.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1
bb=/kmatrix/bin/busybox
results=/kmatrix/results
tab=$(printf '\t')
off() {
    $bb sync
    $bb poweroff -f
}
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$results" || {
    echo "kmatrix: cannot mount the results folder (9p tag results)" >&2
    off
}
log() {
    echo "kmatrix: $*"
    echo "$*" >> "$results/guest.log"
}
kernel=$($bb uname -r)
log "kernel $kernel up"
modules=$($bb cat "$results/modules-dir")
$bb mkdir -p "/lib/modules/$kernel"
$bb mount --bind "$modules" "/lib/modules/$kernel" || log "cannot bind $modules"
# Modules the kernel asks for (veth, nf_nat, ...) come from the image, through busybox.
echo /kmatrix/bin/modprobe > /proc/sys/kernel/modprobe
$bb mount -t tmpfs -o mode=1777 tmpfs /tmp
$bb mount -t tmpfs -o mode=755 tmpfs /run
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /dev/shm
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup || log "cannot mount cgroup2"
$bb mount -t bpf bpffs /sys/fs/bpf || log "cannot mount bpffs"
$bb hostname kmatrix
$bb ip link set lo up
while IFS="$tab" read -r name dir command; do
    log "start $name"
    (cd "$dir" && CARGO_MANIFEST_DIR="$dir" exec $command) < /dev/null > "$results/$name.out" 2>&1
    echo $? > "$results/$name.rc"
    log "done $name: exit $($bb cat "$results/$name.rc")"
done < "$results/plan"
$bb dmesg > "$results/dmesg.txt"
log "finished"
off
