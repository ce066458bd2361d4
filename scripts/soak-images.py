#!/usr/bin/env python3
"""Write the images of the online-GC soak (and of scripts/bench-online.sh) into an OCI
image layout that skopeo can read (`oci:OUTDIR:REF`), offline. Stdlib only.

  python3 scripts/soak-images.py OUTDIR [--families F] [--variants V] [--seed TEXT]
                                 [--base-kib K] [--json]

Images come in families: family f has one base layer of its own (K KiB, default 64,
incompressible) and V variants `f<f>-v<v>`, each the base plus one small layer and a
config of its own. Variants of a family share their base and nothing else, so deleting
or untagging one variant and pushing a sibling right after reuses a layer that a
collector may just have found unreferenced: the race the soak is about.

--json prints the description of scripts/oci-images.py (name, digest, kind, blobs, ...).
The same options always give the same digests; --seed varies them.
"""

import argparse
import importlib.util
import json
import os
import sys


def load_oci_images():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oci-images.py")
    spec = importlib.util.spec_from_file_location("oci_images", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description="Images of the online-GC soak (families sharing a base layer).")
    ap.add_argument("outdir", help="the OCI image layout to write (created if missing)")
    ap.add_argument("--families", type=int, default=4, metavar="F")
    ap.add_argument("--variants", type=int, default=3, metavar="V")
    ap.add_argument("--base-kib", type=int, default=64, metavar="K")
    ap.add_argument("--seed", default="soak")
    ap.add_argument("--json", action="store_true", help="print a JSON description")
    args = ap.parse_args()
    if args.families < 1 or args.variants < 1 or args.base_kib < 1:
        ap.error("--families, --variants and --base-kib must be >= 1")

    oci = load_oci_images()
    L = oci.Layout(os.path.abspath(args.outdir))
    names = []
    for f in range(args.families):
        base = L.layer([
            ("base", None),
            ("base/lib.so", oci.pseudo_random(f"{args.seed}:base:{f}", args.base_kib * 1024)),
        ])
        for v in range(args.variants):
            own = L.layer([
                ("app", None),
                ("app/VERSION", f"{args.seed} f{f} v{v}\n".encode()),
                ("app/app.bin", oci.pseudo_random(f"{args.seed}:app:{f}:{v}", 8192)),
            ])
            name = f"f{f}-v{v}"
            L.ref(name, L.image([base, own], cmd=["/app/app.bin"], label=f"soak {args.seed} {name}"))
            names.append(name)
    L.write()
    images = oci.describe(L, set(names))
    if args.json:
        json.dump({"layout": L.root, "images": images}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for e in images:
            print(f"{e['name']:<10} {e['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
