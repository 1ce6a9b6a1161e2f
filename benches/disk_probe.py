#!/usr/bin/env python3
"""How many durability barriers per second does this disk give?

Writes 256 bytes through a shared mapping into each of N preallocated,
zero-filled 2 MiB files (like reserva's shard segments), then makes them
durable, three ways: fdatasync one file after another, fdatasync from N
threads at once, and one file alone. reserva's `--fsync always` throughput is
bounded by (barriers per second) x (records per shard per group commit).

Usage: python3 benches/disk_probe.py [DIR] [N]   (DIR on the disk to probe)
"""
import mmap, os, sys, tempfile, threading, time

d = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 32
size = 2 << 20
rounds = 5
with tempfile.TemporaryDirectory(dir=d) as tmp:
    fds, maps = [], []
    for i in range(n):
        fd = os.open(os.path.join(tmp, f"seg{i}"), os.O_RDWR | os.O_CREAT)
        os.posix_fallocate(fd, 0, size)
        os.pwrite(fd, b"\0" * size, 0)
        os.fsync(fd)
        fds.append(fd)
        maps.append(mmap.mmap(fd, size))

    def write(k):
        for m in maps:
            m[k * 256:(k + 1) * 256] = os.urandom(256)

    k = 0
    for mode in ("sequential", "parallel"):
        t = time.time()
        for _ in range(rounds):
            write(k)
            k += 1
            if mode == "sequential":
                for fd in fds:
                    os.fdatasync(fd)
            else:
                ts = [threading.Thread(target=os.fdatasync, args=(fd,)) for fd in fds]
                for x in ts:
                    x.start()
                for x in ts:
                    x.join()
        per = (time.time() - t) / rounds / n
        print(f"{mode:>10}: {per * 1e3:.2f} ms per file barrier, {1 / per:.0f} barriers/s")
    t = time.time()
    for _ in range(20):
        maps[0][k * 256:(k + 1) * 256] = os.urandom(256)
        k += 1
        os.fdatasync(fds[0])
    per = (time.time() - t) / 20
    print(f"{'one file':>10}: {per * 1e3:.2f} ms per barrier")
    for m in maps:
        m.close()
    for fd in fds:
        os.close(fd)
