//! End to end: Debian's docker-registry (distribution 2.8) serves its store through a regfs
//! mount, real skopeo pushes and pulls images, and a GC epoch started with SIGUSR1 races
//! pulls and pushes. Nothing leaves the machine: images are generated locally
//! (`scripts/oci-images.py`), the registry listens on 127.0.0.1.
//!
//! - The registry runs as its own non-root user (`docker-registry`, as Debian runs it; a
//!   dedicated system user is created if the package's is missing), over the mount.
//! - skopeo runs as `nobody` with a private HOME/TMPDIR/XDG tree, so its blob-info cache
//!   lives in the test's directory (as root it would share /var/lib/containers/cache).
//! - The epoch is held in its "closing" state (writes refused) by an in-place writer kept
//!   open through the mount (a plain file at the store's root, which the registry never
//!   uses) with a generous `--drain-timeout`. While `regfs status` says read-only, pushes
//!   are attempted (they must fail, the registry logging EROFS) and pulls must succeed; a
//!   loop of pulls runs through the whole epoch.
//! - Afterwards: the refused pushes succeed, every kept image pulls and verifies, exactly
//!   the unreferenced blobs are gone (and the job record says so), every link file is
//!   whole, and neither the registry nor the daemon logged an error other than the refused
//!   writes (and fuser's interrupt race, see [`FUSER_INTERRUPT_RACE`]).
//!
//! Prerequisites: root, /dev/fuse, python3, docker-registry, skopeo. Under CI=true a
//! missing one fails the test; elsewhere the test says why and returns.
//! `REGFS_E2E_KEEP=1` keeps each test's directory (store, registry and daemon logs).
mod cache;
#[path = "../common/mod.rs"]
mod common;
mod ctx;
mod observe;
mod retention;
mod scenario;
mod support;
mod world;

use std::time::Duration;

use ctx::Mode;
use scenario::scenario;

const BIN: &str = env!("CARGO_BIN_EXE_regfs");
const V2: &str = "docker/registry/v2";
/// The in-place writer that holds the epoch open (outside `docker/`: the collector and
/// the registry never look at it).
const HOLDER: &str = "regfs-e2e-epoch-holder";
/// How long the epoch is held in "closing" at least.
const HOLD: Duration = Duration::from_secs(3);
/// The drain timeout the daemon runs with: far longer than the hold.
const DRAIN_TIMEOUT: &str = "60";
const EROFS_TEXT: &str = "read-only file system";
/// The one ERROR line the daemon may log. The registry is a Go program, whose threads get
/// signals (most likely the runtime's preemption signal, SIGURG); one that arrives while a
/// thread waits on a FUSE request makes the kernel send FUSE_INTERRUPT. fuser answers every INTERRUPT with ENOSYS; when the interrupted
/// request has been answered in the meantime the kernel has nothing to match that answer
/// with and refuses it with ENOENT, which fuser logs at ERROR level. The interrupted
/// request itself was answered normally (verified with REGFS_LOG=fuser=debug: an
/// INTERRUPT for a SETATTR size 0 of a link file, followed by its 71-byte WRITE).
const FUSER_INTERRUPT_RACE: &str = "Failed to send FUSE reply: No such file or directory";

/// Prefix of this file's temporary directories. Not tests/common's `regfs-test-`: while
/// this test ran, a test binary built with a `clean_stale_mounts` that lazily unmounted
/// every FUSE mount under that prefix, live ones included, pulled the store out from under
/// the registry (a pull then failed with 404). A prefix of its own keeps this test
/// independent of other test binaries running at the same time.
const PREFIX: &str = "regfs-e2e-";

#[test]
fn gc_epoch_races_real_pulls_and_pushes() {
    scenario(Mode::Default);
}

#[test]
fn delete_untagged_keeps_tagged_multi_arch_image_and_its_signature() {
    scenario(Mode::DeleteUntagged);
}
