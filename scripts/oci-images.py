#!/usr/bin/env python3
"""Write OCI image layouts that skopeo can read (`oci:DIR:REF`), offline. Stdlib only.

  python3 scripts/oci-images.py OUTDIR [--sample] [--big-mib N] [--many-layers N]
                                [--seed TEXT] [--json]

OUTDIR becomes an OCI image layout (oci-layout, index.json, blobs/sha256/...); images
already in it are kept, so several runs can add to one layout. Every layer is a real,
deterministic tar compressed with gzip; the same options always give the same digests.

  --sample          a few small images (REF: what it is):
                      base            one layer
                      app-v1, app-v2  base + one layer each (shared layers)
                      tools           two layers of its own, nothing shared
                      scratch         one layer of its own (to push untagged, by digest)
                      late            one layer of its own (to push later)
                      multi           an OCI index: linux/amd64 and linux/arm64/v8 images
                      multi-signature a referrer of `multi` (artifactType, `subject`)
  --big-mib N       `big`: one image whose layers hold N MiB of incompressible data
                    (layers of at most --layer-mib MiB, default 64, streamed to disk;
                    gzip level 0 since the data would not compress anyway)
  --many-layers N   `many`: one image with N small layers (a few hundred bytes each)
  --seed TEXT       varies the content (and so the digests) of big and many
  --json            print the description of the images written (below) on stdout
                    instead of a table

Push with: skopeo copy --preserve-digests [--all for an index] oci:OUTDIR:REF
docker://HOST/REPO:TAG (a referrer by digest: docker://HOST/REPO@DIGEST).

The description ({"layout": OUTDIR, "images": [...]}) gives, per REF: name, digest,
media_type, size, kind (image / index / referrer), config, layers [{digest, size}],
children [{digest, media_type, size, platform, config, layers}], subject, artifact_type,
blobs (every blob a full pull of REF needs, child manifests included, its own manifest
excluded) and bytes (their total size).

As a module (scripts that import it by path): Layout, layer/image/index/referrer
builders, sample_images(), big_image(), many_layers_image(), describe().
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import tempfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
SIG_TYPE = "application/vnd.example.signature"
SIG_PAYLOAD = "application/vnd.example.signature.payload.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

# Fixed timestamps so that every run produces the same digests.
MTIME = 1700000000
CREATED = "2023-11-14T22:13:20Z"

MIB = 1024 * 1024


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canon(obj):
    return json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n"


def pseudo_random(seed, size):
    """Deterministic incompressible bytes (small sizes: a SHA-256 chain)."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _tar_info(path, size=None):
    info = tarfile.TarInfo(path)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if size is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o755 if path.startswith(("bin/", "usr/bin/")) else 0o644
        info.size = size
    return info


def make_tar(files):
    """files: list of (path, bytes or None for a directory). Deterministic tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in files:
            if content is None:
                tar.addfile(_tar_info(path))
            else:
                tar.addfile(_tar_info(path, len(content)), io.BytesIO(content))
    return buf.getvalue()


class _HashingWriter:
    """A write-only file object that hashes (and counts) what passes to `out`."""

    def __init__(self, out):
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self):
        if self.out is not None:
            self.out.flush()

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


class _RandomReader:
    """size bytes of seeded pseudo-random data, generated as tarfile reads them."""

    def __init__(self, seed, size):
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            n = self.left
        self.left -= n
        return self.rng.randbytes(n)


class Layout:
    """An OCI image layout. Images already in ROOT/index.json are kept (by ref name)."""

    def __init__(self, root):
        self.root = root
        self.blobdir = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobdir, exist_ok=True)
        self.blobs = {}  # digest -> bytes (blobs built in memory)
        self.sizes = {}  # digest -> size (every blob, streamed ones included)
        self.refs = []  # index.json descriptors
        self.kinds = {}  # digest -> kind (layer, config, manifest, index, ...)
        self.mtypes = {}  # digest -> media type
        self.manifests = {}  # digest -> parsed manifest / index
        self._load()

    def _load(self):
        """Picks up the refs (and their manifests) of an existing layout."""
        path = os.path.join(self.root, "index.json")
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            self.refs = json.load(f).get("manifests", [])
        todo = [(d["digest"], d["mediaType"]) for d in self.refs]
        while todo:
            dgst, mt = todo.pop()
            if dgst in self.manifests:
                continue
            data = self.read_blob(dgst)
            m = json.loads(data)
            self.manifests[dgst] = m
            self.sizes[dgst] = len(data)
            self.mtypes.setdefault(dgst, mt)
            self.kinds.setdefault(dgst, "index" if mt == MT_INDEX else "manifest")
            for d in ([m["config"]] if "config" in m else []) + m.get("layers", []):
                self.sizes[d["digest"]] = d["size"]
                self.mtypes.setdefault(d["digest"], d["mediaType"])
            todo += [(c["digest"], c["mediaType"]) for c in m.get("manifests", [])]

    def blob_path(self, dgst):
        return os.path.join(self.blobdir, dgst.split(":", 1)[1])

    def read_blob(self, dgst):
        if dgst in self.blobs:
            return self.blobs[dgst]
        with open(self.blob_path(dgst), "rb") as f:
            return f.read()

    def add_blob(self, data, media_type, kind):
        dgst = sha256(data)
        self.blobs[dgst] = data
        self.sizes[dgst] = len(data)
        self.kinds.setdefault(dgst, kind)
        self.mtypes.setdefault(dgst, media_type)
        path = self.blob_path(dgst)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
        return {"mediaType": media_type, "digest": dgst, "size": len(data)}

    def layer(self, files):
        """A tar+gzip layer from (path, bytes|None) entries; returns (descriptor, diff_id)."""
        tar = make_tar(files)
        gz = gzip.compress(tar, compresslevel=6, mtime=0)
        desc = self.add_blob(gz, MT_LAYER, "layer")
        return desc, sha256(tar)

    def random_layer(self, path, seed, size, compresslevel=0):
        """A layer holding one file of `size` seeded random bytes, streamed to disk (never
        held in memory). Returns (descriptor, diff_id)."""
        fd, tmp = tempfile.mkstemp(dir=self.blobdir, prefix=".tmp-layer-")
        try:
            with os.fdopen(fd, "wb") as f:
                compressed = _HashingWriter(f)
                with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                                   compresslevel=compresslevel) as gz:
                    plain = _HashingWriter(gz)
                    with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                        parent = os.path.dirname(path)
                        if parent:
                            tar.addfile(_tar_info(parent))
                        tar.addfile(_tar_info(path, size), _RandomReader(seed, size))
            dgst = compressed.digest()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as open() would have created it, not 0600
            os.replace(tmp, self.blob_path(dgst))
        except BaseException:
            os.unlink(tmp)
            raise
        self.sizes[dgst] = compressed.size
        self.kinds.setdefault(dgst, "layer")
        self.mtypes.setdefault(dgst, MT_LAYER)
        return {"mediaType": MT_LAYER, "digest": dgst, "size": compressed.size}, plain.digest()

    def image(self, layers, arch="amd64", cmd=None, variant=None, label="regfs-fixture"):
        """An image manifest (and its config) from [(descriptor, diff_id)]."""
        config = {
            "created": CREATED,
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": cmd or ["/bin/sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
            "history": [
                {"created": CREATED, "created_by": f"{label} layer {i}"}
                for i in range(len(layers))
            ],
        }
        if variant:
            config["variant"] = variant
        cdesc = self.add_blob(canon(config), MT_CONFIG, "config")
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": cdesc,
            "layers": [desc for desc, _ in layers],
        }
        return self.add_manifest(manifest, MT_MANIFEST, "manifest")

    def index(self, children):
        """An OCI index from [(manifest descriptor, platform dict)]."""
        index = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [dict(desc, platform=plat) for desc, plat in children],
        }
        return self.add_manifest(index, MT_INDEX, "index")

    def referrer(self, subject, payload, artifact_type=SIG_TYPE, signer="regfs-fixture"):
        """An OCI 1.1 referrer (a "signature") of `subject`: artifactType, a config of that
        type, one payload layer, and `subject`."""
        config = self.add_blob(canon({"signer": signer, "algorithm": "none"}),
                               artifact_type, "config")
        layer = self.add_blob(canon(payload), SIG_PAYLOAD, "layer")
        referrer = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "artifactType": artifact_type,
            "config": config,
            "layers": [layer],
            "subject": {"mediaType": subject["mediaType"], "digest": subject["digest"],
                        "size": subject["size"]},
            "annotations": {"org.opencontainers.image.created": CREATED},
        }
        return self.add_manifest(referrer, MT_MANIFEST, "manifest")

    def add_manifest(self, manifest, media_type, kind):
        desc = self.add_blob(canon(manifest), media_type, kind)
        self.manifests[desc["digest"]] = manifest
        return desc

    def ref(self, name, desc, extra=None):
        """Names `desc` in index.json (replacing an earlier image of that name)."""
        self.refs = [r for r in self.refs if r.get("annotations", {}).get(REF_NAME) != name]
        d = dict(desc)
        if extra:
            d.update(extra)
        d["annotations"] = {REF_NAME: name}
        self.refs.append(d)

    def write(self):
        with open(os.path.join(self.root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(self.root, "index.json"), "wb") as f:
            f.write(canon({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.refs}))

    def references(self, dgst):
        """Blob digests a manifest references directly (config, layers, children)."""
        m = self.manifests[dgst]
        out = []
        if "config" in m:
            out.append(m["config"]["digest"])
        out += [l["digest"] for l in m.get("layers", [])]
        out += [c["digest"] for c in m.get("manifests", [])]
        return out

    def closure(self, dgst):
        """Every blob a full pull of manifest `dgst` needs (child manifests included,
        `dgst` itself excluded), in a stable order."""
        out = []
        for d in self.references(dgst):
            if d not in out:
                out.append(d)
            if d in self.manifests:
                out += [x for x in self.closure(d) if x not in out]
        return out

    def named(self):
        """ref name -> descriptor, in index.json order."""
        return {r["annotations"][REF_NAME]: r for r in self.refs
                if REF_NAME in r.get("annotations", {})}


# --------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------


def sample_images(L):
    """The --sample set (see the module docstring); returns name -> descriptor."""
    base = L.layer([
        ("bin", None),
        ("bin/sh", b"#!fake shell of the regfs sample base layer\n" + pseudo_random("s-sh", 4096)),
        ("etc", None),
        ("etc/os-release", b'NAME="regfs sample"\nID=regfs-sample\nVERSION_ID=1\n'),
        ("usr", None),
        ("usr/lib", None),
        # Incompressible and larger than FUSE's read chunks.
        ("usr/lib/libsample.so", pseudo_random("s-lib", 256 * 1024)),
    ])
    app1 = L.layer([("opt", None), ("opt/app", None), ("opt/app/VERSION", b"1\n"),
                    ("opt/app/app.bin", pseudo_random("s-app1", 40000))])
    app2 = L.layer([("opt", None), ("opt/app", None), ("opt/app/VERSION", b"2\n"),
                    ("opt/app/app.bin", pseudo_random("s-app2", 40000))])
    tools1 = L.layer([("usr", None), ("usr/bin", None),
                      ("usr/bin/tool", b"#!fake tool\n" + pseudo_random("s-tools1", 60000))])
    tools2 = L.layer([("etc", None), ("etc/tool.conf", b"# tools\n" + pseudo_random("s-tools2", 3000))])
    scratch = L.layer([("data", None), ("data/scratch.bin", pseudo_random("s-scratch", 50000))])
    late = L.layer([("srv", None), ("srv/late.bin", pseudo_random("s-late", 30000))])
    amd64 = L.layer([("usr", None), ("usr/bin", None),
                     ("usr/bin/multi", b"ELF amd64 fake\n" + pseudo_random("s-amd64", 20000))])
    base_arm = L.layer([("bin", None), ("bin/sh", b"#!fake arm64 shell\n" + pseudo_random("s-arm", 8000))])
    arm64 = L.layer([("usr", None), ("usr/bin", None),
                     ("usr/bin/multi", b"ELF arm64 fake\n" + pseudo_random("s-arm64", 20000))])

    lab = "regfs-sample"
    imgs = {}
    imgs["base"] = L.image([base], label=lab)
    imgs["app-v1"] = L.image([base, app1], cmd=["/opt/app/app.bin"], label=lab)
    imgs["app-v2"] = L.image([base, app2], cmd=["/opt/app/app.bin"], label=lab)
    imgs["tools"] = L.image([tools1, tools2], cmd=["/usr/bin/tool"], label=lab)
    imgs["scratch"] = L.image([scratch], cmd=["/bin/true"], label=lab)
    imgs["late"] = L.image([base, late], cmd=["/bin/true"], label=lab)
    m_amd = L.image([base, amd64], arch="amd64", cmd=["/usr/bin/multi"], label=lab)
    m_arm = L.image([base_arm, arm64], arch="arm64", variant="v8", cmd=["/usr/bin/multi"],
                    label=lab)
    imgs["multi"] = L.index([
        (m_amd, {"architecture": "amd64", "os": "linux"}),
        (m_arm, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ])
    imgs["multi-signature"] = L.referrer(imgs["multi"], {
        "critical": {"image": {"docker-manifest-digest": imgs["multi"]["digest"]},
                     "type": "regfs sample signature"},
    }, signer=lab)
    for name, desc in imgs.items():
        L.ref(name, desc)
    return imgs


def big_image(L, mib, seed="", layer_mib=64, name="big"):
    """One image whose layers hold `mib` MiB of incompressible data in total."""
    layers = []
    left, i = mib * MIB, 0
    while left > 0 or not layers:
        size = min(left, layer_mib * MIB)
        layers.append(L.random_layer(f"data/big-{i:03}.bin", f"big:{seed}:{i}", size))
        left -= size
        i += 1
    desc = L.image(layers, cmd=["/bin/true"], label=f"regfs-big {seed}".strip())
    L.ref(name, desc)
    return desc


def many_layers_image(L, n, seed="", name="many"):
    """One image with `n` small layers, each holding one unique file."""
    layers = [L.layer([("m", None), (f"m/{i:05}", f"layer {i} {seed}\n".encode()
                                      + pseudo_random(f"many:{seed}:{i}", 256))])
              for i in range(n)]
    desc = L.image(layers, cmd=["/bin/true"], label=f"regfs-many {seed}".strip())
    L.ref(name, desc)
    return desc


def _kind(L, dgst):
    m = L.manifests[dgst]
    if "manifests" in m:
        return "index"
    return "referrer" if "subject" in m else "image"


def _layers(L, m):
    return [{"digest": l["digest"], "size": l["size"]} for l in m.get("layers", [])]


def describe(L, names=None):
    """The description of the named images (all of index.json by default)."""
    out = []
    for name, desc in L.named().items():
        if names is not None and name not in names:
            continue
        dgst = desc["digest"]
        m = L.manifests[dgst]
        blobs = L.closure(dgst)
        e = {
            "name": name,
            "digest": dgst,
            "media_type": desc["mediaType"],
            "size": desc["size"],
            "kind": _kind(L, dgst),
            "config": m["config"]["digest"] if "config" in m else None,
            "layers": _layers(L, m),
            "children": [{"digest": c["digest"], "media_type": c["mediaType"],
                          "size": c["size"], "platform": c.get("platform"),
                          "config": L.manifests[c["digest"]].get("config", {}).get("digest"),
                          "layers": _layers(L, L.manifests[c["digest"]])}
                         for c in m.get("manifests", [])],
            "subject": m["subject"]["digest"] if "subject" in m else None,
            "artifact_type": m.get("artifactType"),
            "blobs": blobs,
            "bytes": sum(L.sizes[b] for b in blobs),
        }
        out.append(e)
    return out


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description="Write OCI image layouts skopeo can read (oci:OUTDIR:REF), offline.",
        epilog="See the top of this file for the images and the --json description.")
    ap.add_argument("outdir", help="the OCI image layout to write (created if missing)")
    ap.add_argument("--sample", action="store_true",
                    help="a few small images: shared layers, a multi-arch index, a referrer")
    ap.add_argument("--big-mib", type=int, metavar="N",
                    help="`big`: one image whose layers hold N MiB of incompressible data")
    ap.add_argument("--layer-mib", type=int, default=64, metavar="N",
                    help="largest layer of `big`, in MiB (default 64)")
    ap.add_argument("--many-layers", type=int, metavar="N",
                    help="`many`: one image with N small layers")
    ap.add_argument("--seed", default="", help="varies the content of big and many")
    ap.add_argument("--json", action="store_true", help="print a JSON description")
    args = ap.parse_args()
    if not (args.sample or args.big_mib is not None or args.many_layers is not None):
        ap.error("nothing to write: give --sample, --big-mib N and/or --many-layers N")
    if args.big_mib is not None and args.big_mib < 0 or args.layer_mib < 1:
        ap.error("--big-mib must be >= 0 and --layer-mib >= 1")
    if args.many_layers is not None and args.many_layers < 1:
        ap.error("--many-layers must be >= 1")

    L = Layout(os.path.abspath(args.outdir))
    names = []
    if args.sample:
        names += list(sample_images(L))
    if args.big_mib is not None:
        big_image(L, args.big_mib, seed=args.seed, layer_mib=args.layer_mib)
        names.append("big")
    if args.many_layers is not None:
        many_layers_image(L, args.many_layers, seed=args.seed)
        names.append("many")
    L.write()

    images = describe(L, set(names))
    if args.json:
        json.dump({"layout": L.root, "images": images}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"OCI image layout {L.root}")
    print(f"  {'ref':<16} {'kind':<9} {'digest':<19} {'blobs':>5} {'bytes':>12}")
    for e in images:
        print(f"  {e['name']:<16} {e['kind']:<9} {e['digest'][:19]} {len(e['blobs']):>5} "
              f"{e['bytes']:>12}")
    print(f"push: skopeo copy --preserve-digests [--all] oci:{L.root}:REF docker://HOST/REPO:TAG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
