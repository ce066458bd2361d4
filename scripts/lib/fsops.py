#!/usr/bin/env python3
"""The workloads of scripts/bench-fsops.sh, run on one store root; prints the seconds the
workload took. Only system calls in the timed part (os.open/os.write/os.rename...), by
JOBS threads (the GIL is released in each call).

    fsops.py push|write|read V2ROOT --round R --jobs J --layers N --layer-kb K
             --files-per-job F --file-mb M
"""

import argparse
import hashlib
import os
import sys
import threading
import time
import uuid

CHUNK = 1 << 20


def write_file(path, data, fsync=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def rmtree(path):
    for dirpath, dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.unlink(os.path.join(dirpath, f))
        for d in dirs:
            os.rmdir(os.path.join(dirpath, d))
    os.rmdir(path)


def push_layers(root, layers):
    """Each layer as distribution's filesystem driver stores a blob upload."""
    repo = os.path.join(root, "repositories", "bench")
    for data, hexd, up in layers:
        updir = os.path.join(repo, "_uploads", up)
        os.makedirs(updir, 0o755, exist_ok=True)
        write_file(os.path.join(updir, "startedat"), b"2026-12-01T00:00:00Z")
        write_file(os.path.join(updir, "data"), data)
        hs = os.path.join(updir, "hashstates", "sha256")
        os.makedirs(hs, 0o755, exist_ok=True)
        write_file(os.path.join(hs, str(len(data))), b"\0" * 120)
        blobdir = os.path.join(root, "blobs", "sha256", hexd[:2], hexd)
        os.makedirs(blobdir, 0o755, exist_ok=True)
        os.stat(os.path.join(updir, "data"))
        os.rename(os.path.join(updir, "data"), os.path.join(blobdir, "data"))
        link = os.path.join(repo, "_layers", "sha256", hexd)
        os.makedirs(link, 0o755, exist_ok=True)
        write_file(os.path.join(link, "link"), b"sha256:" + hexd.encode())
        rmtree(updir)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["push", "write", "read"])
    ap.add_argument("root")
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--layer-kb", type=int, default=16)
    ap.add_argument("--files-per-job", type=int, default=4)
    ap.add_argument("--file-mb", type=int, default=16)
    a = ap.parse_args()
    root = a.root
    # The same names and bytes on both sides of a round: derived from the round.
    tag = f"r{a.round}"
    work = [[] for _ in range(a.jobs)]
    if a.workload == "push":
        for i in range(a.layers):
            data = (f"{tag}-layer-{i}-".encode() * (a.layer_kb * 64))[: a.layer_kb * 1024]
            hexd = hashlib.sha256(data).hexdigest()
            work[i % a.jobs].append((data, hexd, str(uuid.UUID(hexd[:32]))))
        target = push_layers
        args = lambda j: (root, work[j])  # noqa: E731
    else:
        chunk = (tag.encode() * CHUNK)[:CHUNK]
        updirs = os.path.join(root, "repositories", "bench", "_uploads")
        files = [
            [os.path.join(updirs, f"{tag}-{j}-{k}", "data") for k in range(a.files_per_job)]
            for j in range(a.jobs)
        ]

        def write(paths):
            for p in paths:
                os.makedirs(os.path.dirname(p), 0o755, exist_ok=True)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    for _ in range(a.file_mb):
                        os.write(fd, chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)

        def read(paths):
            for p in paths:
                fd = os.open(p, os.O_RDONLY)
                try:
                    got = 0
                    while True:
                        b = os.read(fd, CHUNK)
                        if not b:
                            break
                        got += len(b)
                finally:
                    os.close(fd)
                if got != a.file_mb * CHUNK:
                    raise SystemExit(f"{p}: read {got} bytes, wrote {a.file_mb * CHUNK}")

        target = write if a.workload == "write" else read
        args = lambda j: (files[j],)  # noqa: E731
    errors = []

    def run(j):
        try:
            target(*args(j))
        except BaseException as e:  # reported below, with the workload's name
            errors.append(e)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(a.jobs)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if errors:
        print(f"fsops {a.workload} on {root}: {errors[0]!r}", file=sys.stderr)
        return 1
    print(f"{elapsed:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
