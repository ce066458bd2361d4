#!/usr/bin/env python3
"""The floor under any collector's sweep: how long the kernel takes to delete a set of
paths when the program asking does nothing else.

    delete-floor.py STORE PLAN.json [--threads N ...]

PLAN.json is the output of `regfs gc --offline STORE --dry-run --json --list`: its
"deleted" field lists the paths (files or whole directories, relative to STORE) that the
run would delete. Each path is removed bottom-up with bare unlink/rmdir calls, by a pool
of N threads; the time taken is printed, in seconds, on one line per thread count. Each
thread count needs a fresh copy of the store, so give one --threads for one STORE.
scripts/bench-gc.sh uses it to show how much of a sweep is the filesystem's own cost.
"""

import argparse
import errno
import json
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def quietly(op, path: str) -> None:
    # Paths may nest (a fan-out directory and the blobs in it): whoever comes second
    # finds the entry gone or the directory not yet empty, which is fine here.
    try:
        op(path)
    except (FileNotFoundError, OSError) as e:
        if isinstance(e, FileNotFoundError) or e.errno == errno.ENOTEMPTY:
            return
        raise


def remove_tree(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        quietly(os.unlink, path)
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            quietly(os.unlink, os.path.join(dirpath, name))
        for name in dirnames:
            quietly(os.rmdir, os.path.join(dirpath, name))
    quietly(os.rmdir, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("plan")
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    try:
        with open(args.plan, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        print(f"delete-floor: cannot read plan {args.plan}: {e}", file=sys.stderr)
        return 1
    paths = plan.get("deleted")
    if not isinstance(paths, list):
        print(f"delete-floor: {args.plan} has no 'deleted' list (run regfs gc with --json --list)",
              file=sys.stderr)
        return 1
    root = os.path.abspath(args.store)
    full = [os.path.join(root, p) for p in paths]
    for p in full:
        if os.path.commonpath([root, os.path.abspath(p)]) != root:
            print(f"delete-floor: {p} is outside {root}", file=sys.stderr)
            return 1
    t0 = time.perf_counter()
    if args.threads <= 1:
        for p in full:
            remove_tree(p)
    else:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(remove_tree, full, chunksize=32))
    print(f"{time.perf_counter() - t0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
