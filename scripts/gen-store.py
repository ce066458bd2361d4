#!/usr/bin/env python3
"""Writes a synthetic but valid CNCF distribution registry store straight to disk.

    python3 scripts/gen-store.py OUTDIR --blobs N [--repos R] [--seed S]
                                 [--garbage-fraction F] [--uploads K] [--jobs J] [--quiet]

OUTDIR must be missing or empty. The tree is written by J forked writers (default: the
CPUs available), since creating ~280k inodes for 50k blobs is system-time bound.

OUTDIR gets:
  docker/registry/v2/...  the store, in the layout of distribution's filesystem driver
  config.yml              a docker-registry config whose storage.filesystem.rootdirectory
                          is OUTDIR (absolute) and with storage.delete.enabled: true, so
                          `docker-registry garbage-collect [--dry-run] [--delete-untagged]
                          OUTDIR/config.yml` runs on it
  gen-store.json          what was generated and how many blobs each kind of collector
                          should delete (see "expected" below)

Exactly N blob directories (blobs/sha256/<xx>/<hex>/data) are written; every blob has
distinct content, so its digest is its file name. About F of them (default 0.2) are
garbage: referenced by no manifest at all. The rest are manifests, OCI image configs and
tiny layers reachable from some repository's revisions.

What the store contains (all deterministic given --seed):
  * repositories at one, two and three levels (app4, library/nginx1, org3/team1/app7),
    and a repository nested inside another (X and X/tools);
  * OCI image manifests (config + layers), OCI image configs (rootfs.diff_ids match the
    layers, which are uncompressed "tar" media type of a few bytes each);
  * layers shared between images of a repository, and base layers shared between
    repositories; images cross-mounted into a second repository (same manifest digest
    in two repositories);
  * OCI image indexes with 2 child manifests each (linux/amd64, linux/arm64); children
    have revision links but no tags, as a registry stores a multi-arch push;
  * OCI 1.1 referrers (signature-like artifacts with `subject`), untagged;
  * tags: version tags, moving tags (latest, dev, stable) whose index/ holds every digest
    they ever pointed at; images left untagged when a tag moved away; images pushed by
    digest only; every repository has at least one tag (docker-registry 2.8.2
    --delete-untagged aborts on a repository without a _manifests/tags directory);
  * garbage: orphan uploads (configs and layers with _layers links but no manifest), and
    images deleted by digest the way the 2.8 registry does it (revision directory left
    empty, its tags removed, blobs and _layers links left);
  * _uploads/: an empty directory in every repository, and K (default 3) stale uploads
    in progress (data + startedat dated 2021, no hashstates).

Links hold exactly "sha256:<64 hex>" without a newline.

gen-store.json "expected" (counts of blob directories a collector should remove):
  default                       garbage only (every revision, tagged or not, is a root)
  delete_untagged_registry_2_8  docker-registry 2.8 --delete-untagged: only tagged
                                revisions are roots and an index marks its children's
                                manifest blobs but not their configs/layers; referrers
                                (untagged) are removed
  delete_untagged_index_aware   roots are tagged revisions, closed over index children
                                and over referrers whose subject is kept (what a collector
                                that knows indexes and referrers should remove)
"""

import argparse
import hashlib
import json
import os
import random
import sys
import time

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
MT_SIG = "application/vnd.dev.cosign.simplesigning.v1+json"
ART_SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
EMPTY_JSON = b"{}"

WORDS = ["nginx", "redis", "postgres", "alpine", "busybox", "python", "golang", "node",
         "httpd", "memcached", "traefik", "grafana", "prometheus", "etcd", "vault"]
ARCHES = ["amd64", "arm64"]


def sha(b):
    return hashlib.sha256(b).hexdigest()


def dumps(obj):
    # Compact (json's C encoder; indenting would run the slow pure-Python one). The
    # digest is over these exact bytes, as a registry stores what the client pushed.
    return json.dumps(obj, separators=(",", ":")).encode()


class Gen:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.seed = args.seed
        self.blobs = {}  # hex -> bytes, every blob written
        self.referenced = set()  # hex of blobs reachable in some way (not garbage)
        self.garbage = set()
        self.kind = {}  # hex -> "layer" | "config" | "manifest" | "index" | "referrer" | ...
        self.refs = {}  # manifest hex -> [hex] (2.8's References(): config+layers / children)
        self.subject = {}  # referrer hex -> subject hex
        self.layer_n = 0
        self.image_n = 0
        self.base_pool = {a: [] for a in ARCHES}  # arch -> [[layer hex, ...], ...]
        self.repos = []
        self.budget = 0  # referenced blobs still to create
        self.now_epoch = 1_600_000_000 + (args.seed % 1000) * 86400

    # ---- blobs -------------------------------------------------------------------
    def add_blob(self, content, kind, garbage=False):
        h = sha(content)
        if h in self.blobs:
            raise SystemExit("gen-store: internal error: duplicate blob content (%s)" % kind)
        self.blobs[h] = content
        self.kind[h] = kind
        (self.garbage if garbage else self.referenced).add(h)
        if not garbage:
            self.budget -= 1
        return h

    def new_layer(self, garbage=False):
        self.layer_n += 1
        n = self.layer_n
        # A few bytes of distinct content.
        content = b"layer %d/%d %s\n" % (self.seed, n, b"x" * self.rng.randrange(0, 24))
        return self.add_blob(content, "layer", garbage)

    def ts(self, n):
        t = self.now_epoch + n * 3607
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    def new_config(self, layers, arch, repo_name, garbage=False):
        self.image_n += 1
        n = self.image_n
        cfg = {
            "created": self.ts(n),
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/usr/local/bin/%s" % repo_name.rsplit("/", 1)[-1]],
                "WorkingDir": "/",
                "Labels": {"org.opencontainers.image.revision": "%d-%d" % (self.seed, n)},
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h for h in layers]},
            "history": [
                {"created": self.ts(n), "created_by": "/bin/sh -c #(nop) ADD file:%s in / " % h[:16]}
                for h in layers
            ],
        }
        return self.add_blob(dumps(cfg), "config", garbage)

    def desc(self, mt, h):
        return {"mediaType": mt, "digest": "sha256:" + h, "size": len(self.blobs[h])}

    def new_manifest(self, cfg, layers, garbage=False, kind="manifest"):
        m = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": self.desc(MT_CONFIG, cfg),
            "layers": [self.desc(MT_LAYER, h) for h in layers],
        }
        h = self.add_blob(dumps(m), kind, garbage)
        self.refs[h] = [cfg] + list(layers)
        return h

    # ---- images ------------------------------------------------------------------
    def plan_layers(self, repo, arch, new_count):
        """Layer list for an image: shared base + layers reused from the repository's
        previous image + new_count fresh layers. Returns (layers, fresh)."""
        rng = self.rng
        layers = []
        pool = self.base_pool[arch]
        if pool and rng.random() < 0.7:
            layers += rng.choice(pool)
        prev = repo["last_layers"].get(arch)
        if prev and rng.random() < 0.6:
            layers += rng.sample(prev, min(len(prev), rng.randint(1, 2)))
        fresh = [self.new_layer() for _ in range(new_count)]
        layers += fresh
        out, seen = [], set()
        for h in layers:
            if h not in seen:
                seen.add(h)
                out.append(h)
        return out, fresh

    def new_image(self, repo, arch, new_count):
        """An image (manifest + config + layers) linked into repo; costs 2 + new_count
        blobs. Returns the manifest hex."""
        layers, fresh = self.plan_layers(repo, arch, new_count)
        if not layers:  # no shared layer to fall back on; should not happen (see callers)
            raise SystemExit("gen-store: internal error: image without layers")
        # Occasionally the fresh layers become a new shared base.
        if fresh and (not self.base_pool[arch] or self.rng.random() < 0.04):
            self.base_pool[arch].append(fresh[: self.rng.randint(1, len(fresh))])
        repo["last_layers"][arch] = layers
        cfg = self.new_config(layers, arch, repo["name"])
        m = self.new_manifest(cfg, layers)
        repo["layers"].update(layers)
        repo["layers"].add(cfg)
        repo["revisions"].add(m)
        return m

    def fresh_count(self, remaining_after_fixed, lo, hi, min_rest=4):
        """Number of fresh layers so that the budget left afterwards is 0 or >= min_rest."""
        k = self.rng.randint(lo, hi)
        rest = remaining_after_fixed - k
        if rest < min_rest:
            k = remaining_after_fixed
        return max(0, k)

    # ---- tags --------------------------------------------------------------------
    def tag(self, repo, tag, m):
        repo["tags"][tag] = m
        hist = repo["history"].setdefault(tag, [])
        if m not in hist:
            hist.append(m)

    def tag_push(self, repo, m):
        rng = self.rng
        repo["pushes"] += 1
        n = repo["pushes"]
        first = n == 1
        if not first and rng.random() < 0.15:
            return  # pushed by digest only: untagged
        tagged = False
        if rng.random() < 0.7:
            self.tag(repo, "1.%d.%d" % (n // 10, n % 10), m)
            tagged = True
        if first or rng.random() < 0.6:
            self.tag(repo, "latest", m)
            tagged = True
        if not tagged:
            self.tag(repo, "dev", m)

    # ---- repositories ------------------------------------------------------------
    def repo_names(self, count):
        names = []
        for i in range(count):
            k = i % 5
            if k == 0:
                names.append("app%d" % i)
            elif k == 1:
                names.append("library/%s%d" % (WORDS[i % len(WORDS)], i))
            elif k == 2:
                names.append("org%d/team%d/app%d" % (i % 7, i % 3, i))
            elif k == 3:
                names.append("org%d/svc%d" % (i % 7, i))
            else:
                names.append("%s%d" % (WORDS[(i * 7) % len(WORDS)], i))
        if count >= 3:
            names[2] = names[0] + "/tools"  # a repository inside a repository
        return names

    def build(self):
        a = self.args
        n_total = a.blobs
        garbage_n = int(round(n_total * a.garbage_fraction))
        referenced_n = n_total - garbage_n
        if referenced_n < 3:
            raise SystemExit("gen-store: --blobs too small for --garbage-fraction (need >= 3 "
                             "referenced blobs)")
        repos_n = a.repos if a.repos else max(4, n_total // 250)
        # Every repository needs at least one image (>= 3 blobs, usually fewer since
        # shared layers cost nothing); keep the count plausible for tiny stores.
        repos_n = max(1, min(repos_n, referenced_n // 6 or 1))
        self.repos = [
            {"name": nm, "revisions": set(), "layers": set(), "tags": {}, "history": {},
             "last_layers": {}, "pushes": 0, "deleted_revisions": set(), "plain": []}
            for nm in self.repo_names(repos_n)
        ]
        self.budget = referenced_n
        rng = self.rng
        # Repository popularity: a few big, many small.
        weights = [1.0 / (1 + (i % 17)) + rng.random() * 0.3 for i in range(repos_n)]
        self.counts = {"images": 0, "indexes": 0, "referrers": 0, "cross_mounts": 0,
                       "retags": 0}
        empty_cfg = None

        i = 0
        while self.budget > 0:
            repo = self.repos[i] if i < repos_n else rng.choices(self.repos, weights)[0]
            i += 1
            r = rng.random()
            big = self.budget > 60 and repo["pushes"] > 0
            if big and r < 0.04:
                # Multi-arch OCI index: 1 + 2 images.
                children = []
                for arch in ARCHES:
                    k = self.fresh_count(self.budget - 2 - 1 - 4, 1, 3)
                    children.append((arch, self.new_image(repo, arch, k)))
                idx = {
                    "schemaVersion": 2,
                    "mediaType": MT_INDEX,
                    "manifests": [
                        dict(self.desc(MT_MANIFEST, c), platform={"architecture": arch, "os": "linux"})
                        for arch, c in children
                    ],
                }
                h = self.add_blob(dumps(idx), "index")
                self.refs[h] = [c for _, c in children]
                for _, c in children:
                    self.kind[c] = "index-child"
                repo["revisions"].add(h)
                self.tag_push(repo, h)
                self.counts["indexes"] += 1
                repo["plain"].append(h)
            elif big and r < 0.07 and repo["plain"]:
                # OCI 1.1 referrer (a signature) of an earlier manifest of this repository.
                subj = rng.choice(repo["plain"])
                if empty_cfg is None:
                    empty_cfg = self.add_blob(EMPTY_JSON, "empty-config")
                sig = self.add_blob(b'{"critical":{"image":{"docker-manifest-digest":"sha256:%s"}},"n":%d}'
                                    % (subj.encode(), self.counts["referrers"]), "signature")
                smt = MT_INDEX if self.kind[subj] == "index" else MT_MANIFEST
                m = {
                    "schemaVersion": 2,
                    "mediaType": MT_MANIFEST,
                    "artifactType": ART_SIG,
                    "config": self.desc(MT_EMPTY, empty_cfg),
                    "layers": [self.desc(MT_SIG, sig)],
                    "subject": self.desc(smt, subj),
                    "annotations": {"org.opencontainers.image.created": self.ts(self.image_n)},
                }
                h = self.add_blob(dumps(m), "referrer")
                self.refs[h] = [empty_cfg, sig]
                self.subject[h] = subj
                repo["revisions"].add(h)
                repo["layers"].update((empty_cfg, sig))
                self.counts["referrers"] += 1
            elif r < 0.09 and repo["pushes"] > 0:
                # Cross-repository mount of an existing plain image (costs no blob).
                src = rng.choice(self.repos)
                cands = [m for m in src["plain"] if self.kind[m] == "manifest"]
                if src is repo or not cands:
                    continue
                m = rng.choice(cands)
                repo["revisions"].add(m)
                repo["layers"].update(self.refs[m])
                repo["plain"].append(m)
                self.tag_push(repo, m)
                self.counts["cross_mounts"] += 1
            elif r < 0.11 and len(repo["plain"]) > 2:
                # Retag an older image (rollback): "stable" moves back in time.
                self.tag(repo, "stable", rng.choice(repo["plain"][:-1]))
                self.counts["retags"] += 1
            else:
                # At least one fresh layer: the budget left is always 0 or >= 4 here.
                k = max(1, self.fresh_count(self.budget - 2, 1, 3))
                arch = ARCHES[0] if rng.random() < 0.9 else ARCHES[1]
                m = self.new_image(repo, arch, k)
                self.tag_push(repo, m)
                repo["plain"].append(m)
                self.counts["images"] += 1
        if self.budget != 0:
            raise SystemExit("gen-store: internal error: referenced budget ended at %d" % self.budget)
        # Repositories that never got an image (tiny stores) are dropped.
        self.repos = [r for r in self.repos if r["tags"]]
        for r in self.repos:
            if not r["tags"]:
                raise SystemExit("gen-store: internal error: repository without tags")

        # ---- garbage ----
        g = garbage_n
        self.counts["deleted_images"] = 0
        self.counts["orphan_uploads"] = 0
        while g > 0:
            repo = rng.choice(self.repos)
            if g >= 8 and rng.random() < 0.15:
                # Image deleted by digest: revision dir left empty, tags gone, blobs stay.
                k = rng.randint(1, 3)
                if g - (2 + k) < 3:
                    k = g - 2
                layers = [self.new_layer(garbage=True) for _ in range(k)]
                cfg = self.new_config(layers, "amd64", repo["name"], garbage=True)
                m = self.new_manifest(cfg, layers, garbage=True, kind="deleted-manifest")
                repo["deleted_revisions"].add(m)
                repo["layers"].update(layers)
                repo["layers"].add(cfg)
                g -= 2 + k
                self.counts["deleted_images"] += 1
            else:
                # Upload whose manifest was never pushed: config + layers, or layers only.
                k = min(g, rng.randint(1, 4))
                if g - k < 3 and g - k > 0:
                    k = g
                with_cfg = k >= 2 and rng.random() < 0.5
                layers = [self.new_layer(garbage=True) for _ in range(k - (1 if with_cfg else 0))]
                repo["layers"].update(layers)
                if with_cfg:
                    repo["layers"].add(self.new_config(layers, "amd64", repo["name"], garbage=True))
                # ...sometimes next to a link to a live shared layer, as a real push has.
                if repo["last_layers"].get("amd64") and rng.random() < 0.3:
                    repo["layers"].add(repo["last_layers"]["amd64"][0])
                g -= k
                self.counts["orphan_uploads"] += 1
        assert len(self.blobs) == n_total, (len(self.blobs), n_total)
        assert len(self.garbage) == garbage_n

    # ---- expectations ------------------------------------------------------------
    def expectations(self):
        allb = set(self.blobs)

        def mark(roots_by_repo, follow_children, follow_referrers):
            marked = set()
            for repo, roots in roots_by_repo:
                keep = set(roots)
                if follow_children or follow_referrers:
                    by_subject = {}
                    for m in repo["revisions"]:
                        if m in self.subject:
                            by_subject.setdefault(self.subject[m], []).append(m)
                    todo = list(keep)
                    while todo:
                        m = todo.pop()
                        nxt = []
                        if follow_children and self.kind.get(m) == "index":
                            nxt += self.refs[m]
                        if follow_referrers:
                            nxt += by_subject.get(m, [])
                        for c in nxt:
                            if c not in keep:
                                keep.add(c)
                                todo.append(c)
                for m in keep:
                    marked.add(m)
                    marked.update(self.refs[m])
            return marked

        default = mark([(r, r["revisions"]) for r in self.repos], False, False)
        tagged = [(r, set(r["tags"].values())) for r in self.repos]
        du28 = mark(tagged, False, False)
        aware = mark(tagged, True, True)
        untagged_pairs = sum(len(r["revisions"] - set(r["tags"].values())) for r in self.repos)
        unmarked_default = allb - default
        if unmarked_default != self.garbage:
            raise SystemExit("gen-store: internal error: default-mode garbage differs from the "
                             "garbage generated (%d vs %d)" % (len(unmarked_default), len(self.garbage)))
        return {
            "default": len(allb - default),
            "delete_untagged_registry_2_8": len(allb - du28),
            "delete_untagged_index_aware": len(allb - aware),
            "registry_2_8_untagged_manifests_deleted": untagged_pairs,
        }

    # ---- writing -----------------------------------------------------------------
    def write(self, outdir, jobs):
        """Writes the store. Creating an inode costs ~0.3 ms of system time on some
        virtual disks, so the subtrees (blob prefixes, repositories) are shared out
        between `jobs` forked writers."""
        v2 = os.path.join(outdir, "docker", "registry", "v2")
        bdir = os.path.join(v2, "blobs", "sha256")
        rroot = os.path.join(v2, "repositories")
        os.makedirs(bdir)
        os.makedirs(rroot)
        base = {}
        for r in sorted(self.repos, key=lambda r: r["name"]):
            base[r["name"]] = os.path.join(rroot, *r["name"].split("/"))
            os.makedirs(base[r["name"]], exist_ok=True)  # "a" may exist as parent of "a/b"

        def put(path, data):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

        def link(d, h):
            os.mkdir(d)
            put(os.path.join(d, "link"), b"sha256:" + h.encode())

        by_prefix = {}
        for h in self.blobs:
            by_prefix.setdefault(h[:2], []).append(h)

        def write_prefix(prefix):
            p = os.path.join(bdir, prefix)
            os.mkdir(p)
            for h in sorted(by_prefix[prefix]):
                d = os.path.join(p, h)
                os.mkdir(d)
                put(os.path.join(d, "data"), self.blobs[h])

        def write_repo(r):
            b = base[r["name"]]
            os.mkdir(os.path.join(b, "_layers"))
            ld = os.path.join(b, "_layers", "sha256")
            os.mkdir(ld)
            for h in sorted(r["layers"]):
                link(os.path.join(ld, h), h)
            os.mkdir(os.path.join(b, "_manifests"))
            rd = os.path.join(b, "_manifests", "revisions")
            os.mkdir(rd)
            rd = os.path.join(rd, "sha256")
            os.mkdir(rd)
            for h in sorted(r["revisions"]):
                link(os.path.join(rd, h), h)
            for h in sorted(r["deleted_revisions"]):
                os.mkdir(os.path.join(rd, h))  # link removed by DELETE, directory left
            td = os.path.join(b, "_manifests", "tags")
            os.mkdir(td)
            for t in sorted(r["tags"]):
                os.mkdir(os.path.join(td, t))
                link(os.path.join(td, t, "current"), r["tags"][t])
                os.mkdir(os.path.join(td, t, "index"))
                ih = os.path.join(td, t, "index", "sha256")
                os.mkdir(ih)
                for h in r["history"][t]:
                    link(os.path.join(ih, h), h)
            os.mkdir(os.path.join(b, "_uploads"))

        # (cost, function, argument); cost ~ inodes created.
        work = [(2 * len(v) + 1, write_prefix, k) for k, v in by_prefix.items()]
        for r in self.repos:
            cost = 2 * (len(r["layers"]) + len(r["revisions"])) + sum(
                4 + 2 * len(r["history"][t]) for t in r["tags"]) + 8
            work.append((cost, write_repo, r))
        work.sort(key=lambda w: -w[0])
        shares = [[] for _ in range(max(1, jobs))]
        loads = [0] * len(shares)
        for w in work:  # greedy: biggest first to the least loaded writer
            i = loads.index(min(loads))
            shares[i].append(w)
            loads[i] += w[0]

        def run(share):
            for _, fn, arg in share:
                fn(arg)

        if len(shares) == 1:
            run(shares[0])
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pids = []
            for share in shares:
                pid = os.fork()
                if pid == 0:
                    code = 0
                    try:
                        run(share)
                    except BaseException as e:  # report, never fall back into the parent's code
                        print("gen-store: writer %d failed: %r" % (os.getpid(), e), file=sys.stderr)
                        code = 1
                    finally:
                        sys.stderr.flush()
                        os._exit(code)
                pids.append(pid)
            failed = 0
            for pid in pids:
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    failed += 1
            if failed:
                raise SystemExit("gen-store: %d writer(s) failed; %s is incomplete" % (failed, outdir))

        # Stale uploads in progress (deterministic: dated 2021).
        for k in range(self.args.uploads):
            if not self.repos:
                break
            r = self.repos[(k * 7) % len(self.repos)]
            u = "%08x-%04x-4%03x-8%03x-%012x" % tuple(self.rng.getrandbits(b) for b in (32, 16, 12, 12, 48))
            ud = os.path.join(base[r["name"]], "_uploads", u)
            os.mkdir(ud)
            t = 1_610_000_000 + k * 86400
            put(os.path.join(ud, "data"), b"partial upload %d\n" % k)
            put(os.path.join(ud, "startedat"),
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)).encode())
            for f in ("data", "startedat", ""):
                os.utime(os.path.join(ud, f), (t, t))

        config = (
            "# docker-registry config written by regfs scripts/gen-store.py\n"
            "version: 0.1\n"
            "log:\n"
            "  level: warn\n"
            "storage:\n"
            "  filesystem:\n"
            "    rootdirectory: %s\n"
            "  delete:\n"
            "    enabled: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            "  addr: 127.0.0.1:5000\n" % outdir
        )
        put(os.path.join(outdir, "config.yml"), config.encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--blobs", type=int, required=True, help="total blob directories")
    ap.add_argument("--repos", type=int, default=0,
                    help="repositories (default: blobs/250, at least 4)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--garbage-fraction", type=float, default=0.2,
                    help="share of blobs no manifest references (default 0.2)")
    ap.add_argument("--uploads", type=int, default=3, help="stale uploads in progress (default 3)")
    ap.add_argument("--jobs", type=int, default=0,
                    help="parallel writers (default: the CPUs this process may use)")
    ap.add_argument("--quiet", action="store_true", help="no summary on stderr")
    a = ap.parse_args()
    if a.blobs < 10:
        ap.error("--blobs must be at least 10")
    if not 0.0 <= a.garbage_fraction < 1.0:
        ap.error("--garbage-fraction must be in [0, 1)")
    if a.repos < 0 or a.uploads < 0 or a.jobs < 0:
        ap.error("--repos, --uploads and --jobs must not be negative")
    out = os.path.abspath(a.outdir)
    if any(c.isspace() for c in out) or '"' in out or "'" in out or ":" in out or "#" in out:
        ap.error("OUTDIR must not contain whitespace, quotes, ':' or '#' (it goes into config.yml)")
    os.makedirs(out, exist_ok=True)
    if os.listdir(out):
        ap.error("%s is not empty" % out)

    t0 = time.monotonic()
    g = Gen(a)
    g.build()
    exp = g.expectations()
    t1 = time.monotonic()
    g.write(out, a.jobs or len(os.sched_getaffinity(0)))
    t2 = time.monotonic()

    kinds = {}
    for k in g.kind.values():
        kinds[k] = kinds.get(k, 0) + 1
    summary = {
        "generator": "regfs scripts/gen-store.py",
        "seed": a.seed,
        "blobs": len(g.blobs),
        "referenced_blobs": len(g.referenced),
        "garbage_blobs": len(g.garbage),
        "blob_kinds": dict(sorted(kinds.items())),
        "repositories": len(g.repos),
        "revisions": sum(len(r["revisions"]) for r in g.repos),
        "untagged_revisions": sum(len(r["revisions"] - set(r["tags"].values())) for r in g.repos),
        "deleted_revisions": sum(len(r["deleted_revisions"]) for r in g.repos),
        "tags": sum(len(r["tags"]) for r in g.repos),
        "moved_tags": sum(1 for r in g.repos for t in r["history"] if len(r["history"][t]) > 1),
        "layer_links": sum(len(r["layers"]) for r in g.repos),
        "stale_uploads": a.uploads,
        "events": g.counts,
        "expected_deleted_blobs": exp,
    }
    with open(os.path.join(out, "gen-store.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    if not a.quiet:
        print("gen-store: %d blobs (%d garbage) in %d repositories, %d revisions (%d untagged), "
              "%d tags; wrote %s in %.1f s (planning %.1f s)" % (
                  summary["blobs"], summary["garbage_blobs"], summary["repositories"],
                  summary["revisions"], summary["untagged_revisions"], summary["tags"], out,
                  t2 - t0, t1 - t0), file=sys.stderr)
        print("gen-store: expected deletions: default %(default)d, 2.8 --delete-untagged "
              "%(delete_untagged_registry_2_8)d, index/referrer-aware --delete-untagged "
              "%(delete_untagged_index_aware)d" % exp, file=sys.stderr)


if __name__ == "__main__":
    main()
