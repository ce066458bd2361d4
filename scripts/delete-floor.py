#!/usr/bin/env python3
"""The floor under any collector's sweep: how long the kernel takes to delete a set of
paths when the program asking does nothing else.

    delete-floor.py STORE PLAN.json [--processes N]

PLAN.json is the output of `regfs gc --offline STORE --dry-run --json --list`: its
"deleted" field lists the paths (files or whole directories, relative to STORE) that the
run would delete. They are removed by GNU `rm -rf` (native, fts: openat/unlinkat, the
same calls any collector makes), 500 paths per rm, N rm processes at once (xargs -P);
the time taken is printed in seconds. Each run needs a fresh copy of the store.
scripts/bench-gc.sh uses it to show how much of a sweep is the filesystem's own cost.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("plan")
    ap.add_argument("--processes", type=int, default=16)
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
    # Fan-out directories (blobs/sha256/<xx>) only once what is in them is gone, as in
    # regfs's sweep: two rm processes must never walk the same tree.
    fan_out = re.compile(r"/blobs/sha256/[0-9a-f]{2}$")
    passes = [[p for p in full if not fan_out.search(p)], [p for p in full if fan_out.search(p)]]
    t0 = time.perf_counter()
    for paths in passes:
        if not paths:
            continue
        done = subprocess.run(
            ["xargs", "-0", "-n", "500", "-P", str(max(1, args.processes)), "rm", "-rf", "--"],
            input=b"".join(os.fsencode(p) + b"\0" for p in paths),
            check=False,
        )
        if done.returncode != 0:
            print(f"delete-floor: rm -rf failed (xargs exit {done.returncode})", file=sys.stderr)
            return 1
    print(f"{time.perf_counter() - t0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
