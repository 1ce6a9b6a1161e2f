#!/usr/bin/env python3
"""How many durability barriers per second does this disk give, and which
way of writing gets the most?

Every probe writes into preallocated, zero-filled files (posix_fallocate,
then zeros written and fsynced, like reserva's shard segments), so no
barrier also has to commit a file-size change.

1. mapped write + fdatasync: 256 bytes through a shared mapping into each
   of N 2 MiB files, then fdatasync one file after another ("sequential"),
   from N threads at once ("parallel"), and one file alone ("one file").
   reserva's `--fsync always` throughput is bounded by (barriers per
   second) x (records per shard per group commit).
2. pwrite + fdatasync: 4 KiB pwrite appended to one file, then fdatasync.
3. O_DSYNC pwrite: 4 KiB pwrite appended to one file opened O_DSYNC (the
   write returns once durable; no separate sync call).
4. O_DIRECT|O_DSYNC: 4 KiB aligned writes appended to one file opened
   O_DIRECT|O_DSYNC (no page cache).
5. the same as 2-4 with 16 KiB and 64 KiB frames.

Probes 2-5 append sequentially from offset 0, like a journal. Each line
prints barriers/s and ms per barrier (and MiB/s for the append probes).
O_DIRECT is skipped, with a note, where the file system refuses it (tmpfs).

Usage: python3 benches/disk_probe.py [DIR] [N] [SECONDS]
  DIR      a directory on the disk to probe (default .)
  N        files of probe 1 (default 32)
  SECONDS  about how long each append probe runs (default 2)
"""
import mmap
import os
import sys
import tempfile
import threading
import time

d = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 32
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
SEG = 2 << 20          # probe 1: one file per shard segment
JOURNAL = 64 << 20     # probes 2-5: one preallocated journal file
ROUNDS = 5


def zero_file(path, size):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, size)
    chunk = b"\0" * (1 << 20)
    for off in range(0, size, len(chunk)):
        os.pwrite(fd, chunk[: min(len(chunk), size - off)], off)
    os.fsync(fd)
    return fd


def line(name, barriers, elapsed, nbytes=None):
    per = elapsed / max(barriers, 1)
    extra = f", {nbytes / elapsed / (1 << 20):7.1f} MiB/s" if nbytes else ""
    print(f"{name:<34} {1 / per:8.0f} barriers/s  {per * 1e3:7.2f} ms per barrier{extra}")


def mapped(tmp):
    fds, maps = [], []
    for i in range(n):
        fd = zero_file(os.path.join(tmp, f"seg{i}"), SEG)
        fds.append(fd)
        maps.append(mmap.mmap(fd, SEG))

    def write(k):
        for m in maps:
            m[k * 256:(k + 1) * 256] = os.urandom(256)

    k = 0
    for mode in ("sequential", "parallel"):
        t = time.time()
        for _ in range(ROUNDS):
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
        line(f"mmap+fdatasync, {n} files {mode}", ROUNDS * n, time.time() - t)
    t = time.time()
    count = 20
    for _ in range(count):
        maps[0][k * 256:(k + 1) * 256] = os.urandom(256)
        k += 1
        os.fdatasync(fds[0])
    line("mmap+fdatasync, one file", count, time.time() - t)
    for m in maps:
        m.close()
    for fd in fds:
        os.close(fd)


def append(tmp, name, frame, flags, sync):
    """Appends `frame`-byte writes to a fresh zero-filled journal for about
    `secs` seconds (or until it is full); `sync` calls fdatasync after each."""
    path = os.path.join(tmp, f"journal-{frame}-{flags}")
    os.close(zero_file(path, JOURNAL))
    try:
        fd = os.open(path, os.O_RDWR | flags)
    except OSError as e:
        print(f"{name:<34} skipped: {e.strerror}")
        os.unlink(path)
        return
    # An aligned buffer for O_DIRECT: anonymous mappings are page aligned.
    buf = mmap.mmap(-1, frame)
    buf.write(os.urandom(frame))
    off, count = 0, 0
    t = time.time()
    try:
        while off + frame <= JOURNAL and time.time() - t < secs:
            os.pwrite(fd, buf, off)
            if sync:
                os.fdatasync(fd)
            off += frame
            count += 1
    except OSError as e:
        print(f"{name:<34} skipped: {e.strerror}")
        os.close(fd)
        os.unlink(path)
        return
    line(name, count, time.time() - t, off)
    buf.close()
    os.close(fd)
    os.unlink(path)


with tempfile.TemporaryDirectory(dir=d) as tmp:
    print(f"disk_probe: {os.path.abspath(d)}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    mapped(tmp)
    direct = getattr(os, "O_DIRECT", 0)
    for frame in (4096, 16384, 65536):
        kib = frame // 1024
        append(tmp, f"pwrite {kib} KiB + fdatasync", frame, 0, True)
        append(tmp, f"pwrite {kib} KiB, O_DSYNC", frame, os.O_DSYNC, False)
        if direct:
            append(tmp, f"pwrite {kib} KiB, O_DIRECT|O_DSYNC", frame, direct | os.O_DSYNC, False)
