#!/usr/bin/env python3
"""Build a realistic registry store with the real docker-registry and skopeo, offline.

For the differential garbage-collection test of regfs. Standard library only.

  python3 scripts/registry-fixture.py build OUTDIR [--port N]
      Generate OCI image layouts (OUTDIR/oci), start `docker-registry serve` on
      127.0.0.1:PORT over OUTDIR/store, push the scenarios with skopeo (and plain HTTP
      where skopeo 1.9.3 cannot), stop the registry, remove one tag directory on disk,
      and write OUTDIR/fixture.json. OUTDIR must not exist or be empty.

  python3 scripts/registry-fixture.py serve OUTDIR STOREDIR [--port N] [--foreground]
      Start docker-registry over an existing store (config OUTDIR/serve-PORT.yml, log
      OUTDIR/serve-PORT.log), wait until /v2/ answers, print "PORT PID" and exit,
      leaving it running: the caller kills PID (it is not the caller's child; wait for
      the port to close). --foreground: print the same line, then stay the registry's
      parent until it exits; SIGTERM to this script stops it.

  python3 scripts/registry-fixture.py pull-all OUTDIR PORT [--tagged-only] [--expect MODE]
      Pull the images of OUTDIR/fixture.json from 127.0.0.1:PORT with skopeo into
      dir: layouts and verify every manifest and blob digest. By default every image
      present in the store after `build`; --tagged-only: only tagged images (an index
      with --all, so its children too); --expect MODE (default, delete-untagged or
      registry-delete-untagged): the images fixture.json expects to survive that
      collection, and also checks that the manifests and blobs expected to be collected
      are gone. Exits non-zero naming the image that failed.

fixture.json: port, store, store_v2, registry_config, registry_log, oci_layout,
repositories, workarounds, abandoned_upload {repository, upload_id, path, bytes,
started_at}, removed_on_disk [{repository, tag, path}], blobs {digest: {kind,
media_type, size, referenced_by, survives_gc, survives_delete_untagged,
registry_delete_untagged_keeps}}, blobs_on_disk, and images: one entry per (repository,
manifest) with name, scenario, repository, tag (null when untagged), former_tag, digest,
media_type, size, blobs (config, layers, child manifests), config, layers, children,
parent, subject, present (in the store after build), survives_gc (any collection
without --delete-untagged), survives_delete_untagged (tagged manifests, children of kept
indexes and referrers of kept manifests), registry_delete_untagged_keeps /
registry_delete_untagged_pullable (what distribution 2.8.2 actually does), pull_ref.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request


def _load_oci_images():
    """scripts/oci-images.py (image layout generation), imported by path."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oci-images.py")
    spec = importlib.util.spec_from_file_location("oci_images", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["oci_images"] = mod
    sys.dont_write_bytecode = True  # no scripts/__pycache__ in the work tree
    spec.loader.exec_module(mod)
    return mod


_load_oci_images()
from oci_images import (  # noqa: E402
    CREATED, MT_EMPTY, MT_INDEX, MT_MANIFEST, SIG_PAYLOAD, SIG_TYPE, Layout, canon,
    pseudo_random, sha256,
)

SBOM_TYPE = "application/vnd.example.sbom.v1"

V2 = "docker/registry/v2"
GC_MODES = ("default", "delete-untagged", "registry-delete-untagged")


class FixtureError(Exception):
    pass


def log(msg):
    print(f"registry-fixture: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# OCI images of the fixture (layouts are written by scripts/oci-images.py)
# --------------------------------------------------------------------------------------


def generate_images(layout):
    """Build every image of the fixture; returns name -> descriptor."""
    L = layout
    base = L.layer([
        ("bin", None),
        ("bin/sh", b"#!fake shell of the regfs fixture base layer\n" + pseudo_random("sh", 4096)),
        ("etc", None),
        ("etc/os-release", b'NAME="regfs fixture"\nID=regfs\nVERSION_ID=1\n'),
        ("etc/hostname", b"fixture\n"),
        ("usr", None),
        ("usr/lib", None),
        # Incompressible, so that the blob spans many pages (FUSE reads in chunks).
        ("usr/lib/libfixture.so", pseudo_random("libfixture", 300 * 1024)),
    ])
    web1 = L.layer([
        ("srv", None), ("srv/www", None),
        ("srv/www/index.html", b"<h1>web v1</h1>\n"),
        ("srv/www/app.js", b"console.log('web v1');\n" + pseudo_random("web1", 20000)),
    ])
    app_a = L.layer([("opt", None), ("opt/app", None),
                     ("opt/app/VERSION", b"app A\n"), ("opt/app/run", b"#!/bin/sh\necho A\n")])
    app_b = L.layer([("opt", None), ("opt/app", None),
                     ("opt/app/VERSION", b"app B\n"), ("opt/app/run", b"#!/bin/sh\necho B\n")])
    old = L.layer([("opt", None), ("opt/old", None),
                   ("opt/old/README", b"an image whose tag is removed on disk\n")])
    untagged = L.layer([("data", None),
                        ("data/blob.bin", pseudo_random("untagged", 50000)),
                        ("data/NOTE", b"pushed by digest only, never tagged\n")])
    bb1 = L.layer([("bin", None),
                   ("bin/busybox", b"#!fake busybox\n" + pseudo_random("busybox", 60000))])
    bb2 = L.layer([("etc", None), ("etc/busybox.conf", b"# deleted by digest\n"),
                   ("etc/motd", b"doomed\n")])
    amd64 = L.layer([("usr", None), ("usr/bin", None),
                     ("usr/bin/multi", b"ELF amd64 fake\n" + pseudo_random("amd64", 10000))])
    base_arm = L.layer([("bin", None), ("bin/sh", b"#!fake arm64 shell\n"),
                        ("etc", None), ("etc/os-release", b'NAME="regfs fixture arm64"\n')])
    arm64 = L.layer([("usr", None), ("usr/bin", None),
                     ("usr/bin/multi", b"ELF arm64 fake\n" + pseudo_random("arm64", 10000))])

    imgs = {}
    imgs["alpine"] = L.image([base])
    imgs["web-v1"] = L.image([base, web1], cmd=["/bin/sh", "-c", "serve /srv/www"])
    imgs["moving-a"] = L.image([base, app_a], cmd=["/opt/app/run"])
    imgs["moving-b"] = L.image([base, app_b], cmd=["/opt/app/run"])
    # Shares `web1` with web-v1 (another repository): that layer must survive.
    imgs["tag-removed"] = L.image([base, web1, old])
    imgs["untagged"] = L.image([untagged], cmd=["/bin/true"])
    imgs["deleted"] = L.image([bb1, bb2], cmd=["/bin/busybox"])
    imgs["multi-amd64"] = L.image([base, amd64], arch="amd64", cmd=["/usr/bin/multi"])
    imgs["multi-arm64"] = L.image([base_arm, arm64], arch="arm64", variant="v8",
                                  cmd=["/usr/bin/multi"])
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            dict(imgs["multi-amd64"], platform={"architecture": "amd64", "os": "linux"}),
            dict(imgs["multi-arm64"],
                 platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
        ],
    }
    imgs["multi"] = L.add_manifest(index, MT_INDEX, "index")

    # A referrer (a "signature") of the multi-arch index, OCI 1.1 style.
    sig_config = L.add_blob(canon({"signer": "regfs-fixture", "algorithm": "none"}),
                            SIG_TYPE, "config")
    sig_payload = L.add_blob(canon({
        "critical": {"image": {"docker-manifest-digest": imgs["multi"]["digest"]},
                     "type": "regfs fixture signature"},
    }), SIG_PAYLOAD, "layer")
    referrer = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": SIG_TYPE,
        "config": sig_config,
        "layers": [sig_payload],
        "subject": {"mediaType": MT_INDEX, "digest": imgs["multi"]["digest"],
                    "size": imgs["multi"]["size"]},
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    imgs["multi-signature"] = L.add_manifest(referrer, MT_MANIFEST, "manifest")

    # A referrer that is itself an index (an SBOM "attestation index" of web-v1), whose
    # child descriptor carries artifactType: skopeo 1.9.3 cannot push this one.
    empty = L.add_blob(b"{}", MT_EMPTY, "config")
    sbom = L.add_blob(canon({"spdxVersion": "SPDX-2.3", "name": "web-v1",
                             "packages": [{"name": "web", "versionInfo": "1"}]}),
                      "application/spdx+json", "layer")
    sbom_manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": empty,
        "layers": [sbom],
    }
    imgs["sbom"] = L.add_manifest(sbom_manifest, MT_MANIFEST, "manifest")
    sbom_index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "artifactType": SBOM_TYPE,
        "manifests": [dict(imgs["sbom"], artifactType=SBOM_TYPE)],
        "subject": {"mediaType": MT_MANIFEST, "digest": imgs["web-v1"]["digest"],
                    "size": imgs["web-v1"]["size"]},
    }
    imgs["sbom-index"] = L.add_manifest(sbom_index, MT_INDEX, "index")

    for name, desc in imgs.items():
        if name not in ("multi-amd64", "multi-arm64", "sbom"):
            L.ref(name, desc)
    L.write()
    return imgs


# --------------------------------------------------------------------------------------
# HTTP (no proxies: everything is on 127.0.0.1)
# --------------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, data=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def expect(status, want, what, body=b""):
    if status not in want:
        raise FixtureError(f"{what}: HTTP {status} (expected {want}): {body[:300]!r}")


def upload_blob(base, repo, data):
    dgst = sha256(data)
    st, _, _ = http("HEAD", f"{base}/v2/{repo}/blobs/{dgst}")
    if st == 200:
        return dgst
    st, hdrs, body = http("POST", f"{base}/v2/{repo}/blobs/uploads/")
    expect(st, (202,), f"POST blob upload in {repo}", body)
    loc = urllib.parse.urljoin(base + "/", hdrs["Location"])
    sep = "&" if "?" in loc else "?"
    st, _, body = http("PUT", f"{loc}{sep}digest={urllib.parse.quote(dgst)}", data=data,
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(len(data))})
    expect(st, (201,), f"PUT blob {dgst} in {repo}", body)
    return dgst


def http_push_manifest(base, layout, repo, dgst, ref=None):
    """Upload a manifest's config and layers (an index: push its children by digest
    first), then PUT it by digest (or tag) with its media type as Content-Type."""
    m = layout.manifests[dgst]
    for child in m.get("manifests", []):
        http_push_manifest(base, layout, repo, child["digest"])
    for d in ([m["config"]] if "config" in m else []) + m.get("layers", []):
        upload_blob(base, repo, layout.blobs[d["digest"]])
    data = layout.blobs[dgst]
    st, hdrs, body = http("PUT", f"{base}/v2/{repo}/manifests/{ref or dgst}", data=data,
                          headers={"Content-Type": layout.mtypes[dgst]})
    expect(st, (201,), f"PUT manifest {dgst} in {repo}", body)
    got = hdrs.get("Docker-Content-Digest")
    if got and got != dgst:
        raise FixtureError(f"registry stored {got} for manifest {dgst}")


def manifest_digest(base, repo, ref, accept):
    st, hdrs, body = http("GET", f"{base}/v2/{repo}/manifests/{ref}",
                          headers={"Accept": ", ".join(accept)})
    if st != 200:
        return None, st
    return sha256(body), st


ALL_ACCEPT = [MT_MANIFEST, MT_INDEX,
              "application/vnd.docker.distribution.manifest.v2+json",
              "application/vnd.docker.distribution.manifest.list.v2+json"]


# --------------------------------------------------------------------------------------
# docker-registry process
# --------------------------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def write_config(path, store, port):
    # The registry logs to stderr only; the caller redirects it to the log file.
    text = f"""\
# Written by scripts/registry-fixture.py
version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: {store}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: false
  redirect:
    disable: true
http:
  addr: 127.0.0.1:{port}
  secret: regfs-fixture-not-a-secret
  headers:
    X-Content-Type-Options: [nosniff]
"""
    with open(path, "w") as f:
        f.write(text)


def registry_binary():
    exe = shutil.which("docker-registry")
    if not exe:
        raise FixtureError("docker-registry not found (apt-get install -y docker-registry)")
    return exe


def _die_with_parent():
    """preexec_fn: PR_SET_PDEATHSIG(SIGTERM), so a registry started by `build` cannot
    outlive this script even if it is SIGKILLed."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort only
        pass


def start_registry(config, logpath, port, timeout=30.0, die_with_parent=False):
    """Start docker-registry detached from our stdio (its own session, output to logpath)
    and return the Popen once /v2/ answers."""
    logf = open(logpath, "ab")
    try:
        proc = subprocess.Popen([registry_binary(), "serve", config], stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    finally:
        logf.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise FixtureError(f"docker-registry exited with {proc.returncode} at startup; "
                               f"log {logpath}:\n{tail(logpath)}")
        try:
            st, _, _ = http("GET", f"{base}/v2/", timeout=2)
            if st == 200:
                return proc
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            stop_registry(proc)
            raise FixtureError(f"docker-registry did not answer on {base}/v2/ within "
                               f"{timeout}s; log {logpath}:\n{tail(logpath)}")
        time.sleep(0.05)


def launch(store, config_for, log_for, port, die_with_parent=False):
    """Write a config for `store` and start the registry. With no port given, pick a
    free one, and pick again if another process takes it before the registry binds it.
    Returns (port, config path, log path, Popen)."""
    attempts = 1 if port else 4
    for _ in range(attempts):
        p = port or free_port()
        if port_in_use(p):
            if port:
                raise FixtureError(f"port {p} is in use")
            continue
        config, logpath = config_for(p), log_for(p)
        write_config(config, store, p)
        try:
            return p, config, logpath, start_registry(config, logpath, p,
                                                      die_with_parent=die_with_parent)
        except FixtureError as e:
            if port or "address already in use" not in str(e):
                raise
            log(f"port {p} was taken meanwhile; trying another one")
    raise FixtureError("could not find a free port for docker-registry")


def stop_registry(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# skopeo
# --------------------------------------------------------------------------------------


def skopeo_env(outdir):
    """A private HOME/TMPDIR/XDG dirs for skopeo (its blob-info cache, auth, temp files)."""
    home = os.path.join(outdir, ".skopeo", "home")
    tmp = os.path.join(outdir, ".skopeo", "tmp")
    for d in (home, tmp):
        os.makedirs(d, exist_ok=True)
    regconf = os.path.join(outdir, ".skopeo", "registries.conf")
    if not os.path.exists(regconf):
        with open(regconf, "w") as f:
            f.write("unqualified-search-registries = []\n")
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith(("XDG_", "REGISTRY_AUTH"))}
    env.update({
        "HOME": home,
        "TMPDIR": tmp,
        "XDG_RUNTIME_DIR": os.path.join(home, "run"),
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
        "XDG_CACHE_HOME": os.path.join(home, ".cache"),
        "CONTAINERS_REGISTRIES_CONF": regconf,
        "REGISTRY_AUTH_FILE": os.path.join(home, "auth.json"),
        "NO_PROXY": "*",
        "no_proxy": "*",
    })
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
    return env


def skopeo(env, args, check=True):
    exe = shutil.which("skopeo")
    if not exe:
        raise FixtureError("skopeo not found (apt-get install -y skopeo)")
    cmd = [exe, "--insecure-policy", "--tmpdir", env["TMPDIR"]] + args
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=120)
    if check and p.returncode != 0:
        raise FixtureError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr.strip()}")
    return p


# --------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------


class Builder:
    def __init__(self, outdir, port):
        self.outdir = outdir
        self.want_port = port
        self.port = self.base = self.host = None
        self.store = os.path.join(outdir, "store")
        self.ocidir = os.path.join(outdir, "oci")
        self.config = os.path.join(outdir, "registry.yml")
        self.logpath = os.path.join(outdir, "registry.log")
        self.env = skopeo_env(outdir)
        self.layout = None
        self.imgs = None
        self.entries = []
        self.workarounds = []

    # -- pushes ------------------------------------------------------------------------

    def push_skopeo(self, name, repo, tag):
        args = ["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                "--dest-no-creds", "--retry-times", "2"]
        if self.layout.mtypes[self.imgs[name]["digest"]] == MT_INDEX:
            args.append("--all")
        dest = f"{repo}:{tag}" if tag else f"{repo}@{self.imgs[name]['digest']}"
        skopeo(self.env, args + [f"oci:{self.ocidir}:{name}", f"docker://{self.host}/{dest}"])

    def push_by_digest(self, name, repo):
        """skopeo first; registry-side HTTP PUT if skopeo 1.9.3 refuses."""
        try:
            self.push_skopeo(name, repo, None)
            return "skopeo"
        except FixtureError as e:
            first = str(e).strip().splitlines()[-1]
            self.workarounds.append(
                f"{name}: `skopeo copy --preserve-digests oci:...:{name} docker://{repo}@digest`"
                f" failed ({first}); pushed with HTTP PUT /v2/{repo}/manifests/<digest> "
                f"(children and blobs first) instead")
            log(self.workarounds[-1])
            http_push_manifest(self.base, self.layout, repo, self.imgs[name]["digest"])
            return "http"

    def check_pushed(self, name, repo, ref):
        got, st = manifest_digest(self.base, repo, ref, ALL_ACCEPT)
        want = self.imgs[name]["digest"]
        if got != want:
            raise FixtureError(f"{name}: {repo}:{ref} resolves to {got} (HTTP {st}), "
                               f"expected {want}")

    def entry(self, name, repo, tag, scenario, pushed_with, label=None, **kw):
        dgst = self.imgs[name]["digest"]
        e = {
            "name": label or name,
            "scenario": scenario,
            "repository": repo,
            "tag": tag,
            "digest": dgst,
            "media_type": self.layout.mtypes[dgst],
            "size": self.imgs[name]["size"],
            "blobs": self.layout.references(dgst),
            "pushed_with": pushed_with,
        }
        m = self.layout.manifests[dgst]
        if "config" in m:
            e["config"] = m["config"]["digest"]
            e["config_media_type"] = m["config"]["mediaType"]
            e["layers"] = [l["digest"] for l in m["layers"]]
        if "manifests" in m:
            e["children"] = [c["digest"] for c in m["manifests"]]
        if "subject" in m:
            e["subject"] = m["subject"]["digest"]
        if "artifactType" in m:
            e["artifact_type"] = m["artifactType"]
        e.update(kw)
        self.entries.append(e)
        return e

    def run(self):
        t0 = time.monotonic()
        self.layout = Layout(self.ocidir)
        self.imgs = generate_images(self.layout)
        os.makedirs(self.store, exist_ok=True)
        proc = None
        upload = None
        try:
            self.port, _, _, proc = launch(self.store, lambda p: self.config,
                                           lambda p: self.logpath, self.want_port,
                                           die_with_parent=True)
            self.base = f"http://127.0.0.1:{self.port}"
            self.host = f"127.0.0.1:{self.port}"
            log(f"docker-registry pid {proc.pid} on {self.host}")
            upload = self.push_all()
        finally:
            stop_registry(proc)
        self.post_stop()
        with open(os.path.join(upload["path"], "startedat")) as f:
            upload["started_at"] = f.read()
        upload["data_size"] = os.path.getsize(os.path.join(upload["path"], "data"))
        if upload["data_size"] != upload["bytes"]:
            raise FixtureError(f"abandoned upload holds {upload['data_size']} bytes, "
                               f"expected {upload['bytes']}")
        fixture = self.describe(upload, time.monotonic() - t0)
        with open(os.path.join(self.outdir, "fixture.json"), "w") as f:
            json.dump(fixture, f, indent=2)
            f.write("\n")
        return fixture

    def push_all(self):
        # 1. The same image in two repositories (nested names).
        self.push_skopeo("alpine", "library/alpine", "3.19")
        self.check_pushed("alpine", "library/alpine", "3.19")
        self.entry("alpine", "library/alpine", "3.19", "tagged", "skopeo")
        self.push_skopeo("alpine", "mirror/library/alpine", "3.19")
        self.check_pushed("alpine", "mirror/library/alpine", "3.19")
        self.entry("alpine", "mirror/library/alpine", "3.19", "same-image-second-repo",
                   "skopeo", label="alpine-mirror")

        # 2. An image sharing the base layer, in a repository nested under another one.
        self.push_skopeo("web-v1", "team/app/web", "v1")
        self.check_pushed("web-v1", "team/app/web", "v1")
        self.entry("web-v1", "team/app/web", "v1", "shared-layers", "skopeo")

        # 3. Multi-arch index (tagged) with its two platform manifests.
        self.push_skopeo("multi", "team/app/web", "multi")
        self.check_pushed("multi", "team/app/web", "multi")
        for child in ("multi-amd64", "multi-arm64"):
            self.check_pushed(child, "team/app/web", self.imgs[child]["digest"])
        self.entry("multi", "team/app/web", "multi", "multi-arch-index", "skopeo")
        for child in ("multi-amd64", "multi-arm64"):
            arch = self.layout.manifests[self.imgs["multi"]["digest"]]["manifests"]
            plat = next(c["platform"] for c in arch if c["digest"] == self.imgs[child]["digest"])
            self.entry(child, "team/app/web", None, "index-child", "skopeo (--all)",
                       parent=self.imgs["multi"]["digest"], platform=plat)

        # 4. A referrer of the index, untagged, pushed by digest.
        how = self.push_by_digest("multi-signature", "team/app/web")
        self.check_pushed("multi-signature", "team/app/web", self.imgs["multi-signature"]["digest"])
        self.entry("multi-signature", "team/app/web", None, "referrer-of-tagged-index", how)

        # 4b. A referrer that is an index (its child descriptor has artifactType) of web-v1.
        how = self.push_by_digest("sbom-index", "team/app/web")
        self.check_pushed("sbom-index", "team/app/web", self.imgs["sbom-index"]["digest"])
        self.check_pushed("sbom", "team/app/web", self.imgs["sbom"]["digest"])
        # skopeo cannot copy it with --preserve-digests in either direction (it would
        # rewrite the index): pull-all copies it without and checks the index over HTTP.
        self.entry("sbom-index", "team/app/web", None, "referrer-index-of-tagged-image", how,
                   skopeo_preserve_digests=how == "skopeo")
        self.entry("sbom", "team/app/web", None, "index-child", how,
                   parent=self.imgs["sbom-index"]["digest"])

        # 5. A tag moved from image A to image B in team/app (a parent of team/app/web).
        self.push_skopeo("moving-a", "team/app", "moving")
        self.check_pushed("moving-a", "team/app", "moving")
        self.push_skopeo("moving-b", "team/app", "moving")
        self.check_pushed("moving-b", "team/app", "moving")
        self.entry("moving-a", "team/app", None, "tag-moved-away", "skopeo", former_tag="moving")
        self.entry("moving-b", "team/app", "moving", "tag-moved-here", "skopeo")

        # 6. A tag that will be removed on disk after the registry stops.
        self.push_skopeo("tag-removed", "team/app", "old")
        self.check_pushed("tag-removed", "team/app", "old")
        self.entry("tag-removed", "team/app", None, "tag-removed-on-disk", "skopeo",
                   former_tag="old")

        # 7. An untagged plain image, pushed by digest only.
        how = self.push_by_digest("untagged", "library/alpine")
        self.check_pushed("untagged", "library/alpine", self.imgs["untagged"]["digest"])
        self.entry("untagged", "library/alpine", None, "untagged-by-digest", how)

        # 8. A manifest deleted by digest through the API; its layers are not shared.
        self.push_skopeo("deleted", "library/busybox", "1.36")
        self.check_pushed("deleted", "library/busybox", "1.36")
        dgst = self.imgs["deleted"]["digest"]
        st, _, body = http("DELETE", f"{self.base}/v2/library/busybox/manifests/{dgst}")
        expect(st, (202,), f"DELETE library/busybox manifest {dgst}", body)
        got, st = manifest_digest(self.base, "library/busybox", dgst, ALL_ACCEPT)
        if got is not None:
            raise FixtureError("deleted manifest still served")
        self.entry("deleted", "library/busybox", None, "deleted-by-digest", "skopeo",
                   former_tag="1.36")

        # 9. An abandoned upload: POST + PATCH, never completed.
        repo = "team/app/web"
        st, hdrs, body = http("POST", f"{self.base}/v2/{repo}/blobs/uploads/")
        expect(st, (202,), "POST abandoned upload", body)
        uuid = hdrs["Docker-Upload-UUID"]
        loc = urllib.parse.urljoin(self.base + "/", hdrs["Location"])
        chunk = b"abandoned upload: these bytes are never committed\n" * 64
        st, hdrs, body = http("PATCH", loc, data=chunk,
                              headers={"Content-Type": "application/octet-stream",
                                       "Content-Length": str(len(chunk))})
        expect(st, (202,), "PATCH abandoned upload", body)
        return {"repository": repo, "upload_id": uuid, "bytes": len(chunk),
                "path": os.path.join(self.store, V2, "repositories", repo, "_uploads", uuid)}

    def post_stop(self):
        tagdir = os.path.join(self.store, V2, "repositories", "team/app", "_manifests", "tags",
                              "old")
        if not os.path.isdir(tagdir):
            raise FixtureError(f"missing {tagdir}")
        shutil.rmtree(tagdir)

    # -- fixture.json ------------------------------------------------------------------

    def describe(self, upload, elapsed):
        L = self.layout
        by_name = {e["name"]: e for e in self.entries}

        for e in self.entries:
            e["present"] = e["scenario"] != "deleted-by-digest"
            e["survives_gc"] = e["present"]
            # distribution 2.8 --delete-untagged keeps only tagged manifests (no index
            # children, no referrers): a multi-arch image keeps its index but breaks.
            e["registry_delete_untagged_keeps"] = e["present"] and e["tag"] is not None
        # --delete-untagged as regfs means it: tagged manifests, then (to a fixed point)
        # the children of kept indexes and the referrers of kept manifests (same repo).
        kept = {(e["repository"], e["digest"]) for e in self.entries if e["present"] and e["tag"]}
        while True:
            more = set()
            for e in self.entries:
                key = (e["repository"], e["digest"])
                if not e["present"] or key in kept:
                    continue
                if e.get("parent") and (e["repository"], e["parent"]) in kept:
                    more.add(key)
                if e.get("subject") and (e["repository"], e["subject"]) in kept:
                    more.add(key)
            if not more:
                break
            kept |= more
        byd = {(e["repository"], e["digest"]): e for e in self.entries}
        for e in self.entries:
            e["survives_delete_untagged"] = (e["repository"], e["digest"]) in kept
            e["registry_delete_untagged_pullable"] = e["registry_delete_untagged_keeps"] and all(
                byd[(e["repository"], c)]["registry_delete_untagged_keeps"]
                for c in e.get("children", []))
            e["pull_ref"] = (f"{e['repository']}:{e['tag']}" if e["tag"]
                             else f"{e['repository']}@{e['digest']}")
            e["pull_all"] = e["media_type"] == MT_INDEX
            e.setdefault("skopeo_preserve_digests", True)

        # Blobs: what should stay after each collection mode.
        blobs = {}

        def add(dgst, who):
            b = blobs.setdefault(dgst, {"kind": L.kinds[dgst], "media_type": L.mtypes[dgst],
                                        "size": len(L.blobs[dgst]), "referenced_by": []})
            if who not in b["referenced_by"]:
                b["referenced_by"].append(who)

        for e in self.entries:
            add(e["digest"], e["name"])
            for d in e["blobs"]:
                add(d, e["name"])
        for d, b in blobs.items():
            users = [by_name[n] for n in b["referenced_by"]]
            b["survives_gc"] = any(u["survives_gc"] for u in users)
            b["survives_delete_untagged"] = any(u["survives_delete_untagged"] for u in users)
            # distribution 2.8 --delete-untagged marks each kept (tagged) manifest and its
            # direct references only: index children's manifests stay, their layers go.
            b["registry_delete_untagged_keeps"] = any(
                u["registry_delete_untagged_keeps"] for u in users
                if u["digest"] == d or d in u["blobs"])

        v2 = os.path.join(self.store, V2)
        on_disk = sorted(
            "sha256:" + h for pre in os.listdir(os.path.join(v2, "blobs", "sha256"))
            for h in os.listdir(os.path.join(v2, "blobs", "sha256", pre)))
        missing = [d for d, b in blobs.items() if b["survives_gc"] and d not in on_disk]
        if missing:
            raise FixtureError(f"blobs missing from the store after build: {missing}")
        if set(on_disk) - set(blobs):
            raise FixtureError(f"unexpected blobs in the store: {set(on_disk) - set(blobs)}")

        repos = sorted({e["repository"] for e in self.entries})
        return {
            "format": 1,
            "generator": "scripts/registry-fixture.py",
            "registry_version": tool_version([registry_binary(), "--version"]),
            "skopeo_version": tool_version(["skopeo", "--version"]),
            "port": self.port,
            "outdir": self.outdir,
            "store": self.store,
            "store_v2": v2,
            "registry_config": self.config,
            "registry_log": self.logpath,
            "oci_layout": self.ocidir,
            "repositories": repos,
            "images": self.entries,
            "blobs": dict(sorted(blobs.items())),
            "blobs_on_disk": on_disk,
            "abandoned_upload": upload,
            "removed_on_disk": [{"repository": "team/app", "tag": "old",
                                 "path": os.path.join(v2, "repositories", "team/app",
                                                      "_manifests", "tags", "old")}],
            "workarounds": self.workarounds,
            "build_seconds": round(elapsed, 2),
        }


def tool_version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cmd_build(args):
    outdir = os.path.abspath(args.outdir)
    if os.path.exists(outdir) and os.listdir(outdir):
        raise FixtureError(f"{outdir} exists and is not empty")
    os.makedirs(outdir, exist_ok=True)
    fixture = Builder(outdir, args.port).run()
    port = fixture["port"]

    print(f"registry fixture built in {fixture['build_seconds']} s: {outdir}")
    print(f"  store     {fixture['store']}")
    print(f"  config    {fixture['registry_config']} (127.0.0.1:{port})")
    print(f"  log       {fixture['registry_log']}")
    print(f"  fixture   {os.path.join(outdir, 'fixture.json')}")
    print(f"  {'image':<16} {'reference':<34} {'digest':<19} gc  -u  reg-u")
    yn = {True: "yes", False: "no"}
    for e in fixture["images"]:
        ref = e["repository"] + (f":{e['tag']}" if e["tag"] else " (untagged)")
        print(f"  {e['name']:<16} {ref:<34} {e['digest'][:19]} {yn[e['survives_gc']]:<3} "
              f"{yn[e['survives_delete_untagged']]:<3} {yn[e['registry_delete_untagged_keeps']]}")
    b = fixture["blobs"]
    print(f"  blobs: {len(b)} ({sum(1 for x in b.values() if x['survives_gc'])} kept by gc, "
          f"{sum(1 for x in b.values() if x['survives_delete_untagged'])} by --delete-untagged)")
    up = fixture["abandoned_upload"]
    print(f"  abandoned upload: {up['repository']} {up['upload_id']}")
    for w in fixture["workarounds"]:
        print(f"  workaround: {w}")
    return 0


# --------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------


def cmd_serve(args):
    outdir = os.path.abspath(args.outdir)
    store = os.path.abspath(args.storedir)
    if not os.path.isdir(store):
        raise FixtureError(f"{store} is not a directory")
    os.makedirs(outdir, exist_ok=True)
    port, _, logpath, proc = launch(store, lambda p: os.path.join(outdir, f"serve-{p}.yml"),
                                    lambda p: os.path.join(outdir, f"serve-{p}.log"),
                                    args.port)
    print(f"{port} {proc.pid}", flush=True)
    if not args.foreground:
        return 0
    # --foreground: stay the registry's parent; a signal to us stops it, and we exit
    # when it does (so a caller can own and reap this process instead).
    sys.stdout.close()

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        stop_registry(proc)
    return 0 if rc in (0, -signal.SIGTERM, 2) else 1


# --------------------------------------------------------------------------------------
# pull-all
# --------------------------------------------------------------------------------------


def file_digests(d):
    out = {}
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[name] = sha256(f.read())
    return out


def verify_dir(e, d, fixture):
    """A skopeo dir: copy holds manifest.json (the top manifest), the children of an
    index as <hex>.manifest.json, and blobs named by their hex digest."""
    files = file_digests(d)
    want = list(e["blobs"])
    if e["skopeo_preserve_digests"]:
        if files.get("manifest.json") != e["digest"]:
            raise FixtureError(f"manifest.json is {files.get('manifest.json')}, "
                               f"expected {e['digest']}")
    else:
        # skopeo rewrote the index; the registry's copy was checked over HTTP.
        want = [b for b in want if fixture["blobs"][b]["kind"] not in ("manifest", "index")]
    contents = set(files.values())
    if e.get("children"):
        byd = {x["digest"]: x for x in fixture["images"]}
        for c in e["children"]:
            want += byd[c]["blobs"] if c in byd else []
    missing = [b for b in want if b not in contents]
    if missing:
        raise FixtureError(f"missing or corrupt blobs {missing}")
    for name, dg in files.items():
        stem = name.split(".", 1)[0]
        if len(stem) == 64 and dg != "sha256:" + stem:
            raise FixtureError(f"{name} has digest {dg}")


def check_gone(base, e, fixture, mode):
    """The manifest (and the blobs that only it held) must no longer be served."""
    key = {"default": "survives_gc", "delete-untagged": "survives_delete_untagged",
           "registry-delete-untagged": "registry_delete_untagged_keeps"}[mode]
    got, st = manifest_digest(base, e["repository"], e["digest"], ALL_ACCEPT)
    if got is not None:
        raise FixtureError(f"manifest {e['digest']} still served in {e['repository']}")
    for d in e["blobs"]:
        if fixture["blobs"][d][key]:
            continue
        st, _, _ = http("HEAD", f"{base}/v2/{e['repository']}/blobs/{d}")
        if st == 200 and fixture["blobs"][d]["kind"] not in ("manifest", "index"):
            raise FixtureError(f"blob {d} still served in {e['repository']}")


def check_served(base, e):
    """The registry serves this manifest (by tag, or by digest) with the right digest."""
    repo, ref = e["repository"], e["tag"] or e["digest"]
    got, st = manifest_digest(base, repo, ref, ALL_ACCEPT)
    if got != e["digest"]:
        raise FixtureError(f"{repo}:{ref} served {got} (HTTP {st}), expected {e['digest']}")


def check_broken(base, e, fixture):
    """distribution 2.8 --delete-untagged keeps a tagged index but deletes its children."""
    check_served(base, e)
    for c in e.get("children", []):
        got, _ = manifest_digest(base, e["repository"], c, ALL_ACCEPT)
        if got is not None:
            raise FixtureError(f"child {c} still served: the 2.8 bug did not happen?")


def cmd_pull_all(args):
    outdir = os.path.abspath(args.outdir)
    with open(os.path.join(outdir, "fixture.json")) as f:
        fixture = json.load(f)
    host = f"127.0.0.1:{args.port}"
    base = f"http://{host}"
    env = skopeo_env(outdir)
    key = {None: "present", "default": "survives_gc",
           "delete-untagged": "survives_delete_untagged",
           "registry-delete-untagged": "registry_delete_untagged_keeps"}[args.expect]
    pulled, gone, broken, failed = 0, 0, 0, []
    work = tempfile.mkdtemp(prefix="regfs-pull-")
    try:
        for e in fixture["images"]:
            label = f"{e['name']} ({e['pull_ref']})"
            if not e[key]:
                if args.expect and not args.tagged_only:
                    try:
                        check_gone(base, e, fixture, args.expect)
                        gone += 1
                    except FixtureError as err:
                        failed.append(f"{label}: expected collected: {err}")
                continue
            if args.tagged_only and not e["tag"]:
                continue
            if args.expect == "registry-delete-untagged" and not e[
                    "registry_delete_untagged_pullable"]:
                try:
                    check_broken(base, e, fixture)
                    broken += 1
                except FixtureError as err:
                    failed.append(f"{label}: {err}")
                continue
            dest = os.path.join(work, f"{len(os.listdir(work))}-{e['name']}")
            cmd = ["copy", "--quiet", "--src-tls-verify=false", "--src-no-creds",
                   "--retry-times", "1"]
            if e["skopeo_preserve_digests"]:
                cmd.append("--preserve-digests")
            if e["pull_all"]:
                cmd.append("--all")
            p = skopeo(env, cmd + [f"docker://{host}/{e['pull_ref']}", f"dir:{dest}"],
                       check=False)
            try:
                if p.returncode != 0:
                    raise FixtureError(f"skopeo copy failed: {p.stderr.strip()}")
                if not e["skopeo_preserve_digests"]:
                    check_served(base, e)
                verify_dir(e, dest, fixture)
                pulled += 1
            except FixtureError as err:
                failed.append(f"{label}: {err}")
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    print(f"pull-all: {pulled} images pulled and verified"
          + (f", {gone} confirmed collected" if args.expect else "")
          + (f", {broken} kept but broken as distribution 2.8 does" if broken else "")
          + (f", {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build OUTDIR/store and OUTDIR/fixture.json")
    b.add_argument("outdir")
    b.add_argument("--port", type=int, default=0)
    s = sub.add_parser("serve", help="serve STOREDIR; print 'PORT PID' and leave it running")
    s.add_argument("outdir")
    s.add_argument("storedir")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--foreground", action="store_true",
                   help="after printing 'PORT PID', wait for the registry; SIGTERM stops it")
    p = sub.add_parser("pull-all", help="pull and verify the images of OUTDIR/fixture.json")
    p.add_argument("outdir")
    p.add_argument("port", type=int)
    p.add_argument("--tagged-only", action="store_true")
    p.add_argument("--expect", choices=GC_MODES, default=None,
                   help="pull what this collection should keep, check the rest is gone")
    args = ap.parse_args()

    # SIGTERM/SIGHUP unwind through the finally blocks (the registry gets stopped).
    def bail(signum, _frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, bail)

    try:
        return {"build": cmd_build, "serve": cmd_serve, "pull-all": cmd_pull_all}[args.cmd](args)
    except FixtureError as e:
        print(f"registry-fixture: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
