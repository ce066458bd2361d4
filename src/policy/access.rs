//! Access times: when each tag's `current/link` was last written (a push) and when each
//! tag or manifest was last read by the registry (a pull: a GET or HEAD by tag reads the
//! tag's current link, one by digest the manifest's revision link). The CNCF registry
//! records no pull times at all; regfs sees every read it makes.
//!
//! A layer over the rest of the chain ([`AccessRecording`]), outermost, so it records
//! only what the inner layers admitted (a push refused by the gate or the link check is
//! no push). What it records goes to an [`AccessRecorder`]: maps in memory, updated
//! under a short lock, so a thousand pulls of one tag between two flushes are one entry.
//! Nothing is written on the request's path: the daemon's journal
//! (`daemon::access_journal`) takes the maps in the background.
//!
//! A read costs a map update keyed by the link's inode number: what the inode is (its
//! repository and tag or digest) is worked out from its path once, at its first read,
//! and remembered (inode numbers are never reused). Reads of `_layers` links (one per
//! blob a pull fetches) and of tag index links are not looked at: the layer tells them
//! apart by the link's role, before any path is built.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Change, ChangeLease, LinkRead, Name, StorePolicy, WriteRole, Writer, WriterLease};
use crate::error::FsResult;
use crate::layout::paths::LinkRole;
use crate::layout::{Digest, PathKind, classify};

/// What was accessed, in which repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Accessed {
    /// A tag's current link was written.
    TagPushed { repo: String, tag: String },
    /// A tag's current link was read.
    TagPulled { repo: String, tag: String },
    /// A manifest's revision link was read (a GET or HEAD by digest, or the second step
    /// of one by tag).
    ManifestPulled { repo: String, digest: Digest },
}

impl Accessed {
    /// The repository accessed.
    pub fn repo(&self) -> &str {
        match self {
            Accessed::TagPushed { repo, .. }
            | Accessed::TagPulled { repo, .. }
            | Accessed::ManifestPulled { repo, .. } => repo,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

fn keep_later<K: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, Millis, S>,
    key: K,
    at: Millis,
) {
    let t = map.entry(key).or_insert(at);
    if *t < at {
        *t = at;
    }
}

/// Hashes an inode number with one multiplication (Fibonacci hashing): the numbers are
/// the daemon's own, sequential, so no one can choose colliding keys, and SipHash would
/// cost a read more than the rest of its recording.
#[derive(Debug, Default, Clone, Copy)]
struct NodeHasher(u64);

impl std::hash::Hasher for NodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type NodeMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<NodeHasher>>;

#[derive(Debug, Default)]
struct Noted {
    /// Accesses told by path (pushes), with their latest time.
    by_path: HashMap<Accessed, Millis>,
    /// Reads of link inodes, with their latest time.
    reads: NodeMap<Millis>,
    /// What each link inode read so far is (`None`: nothing to record).
    nodes: NodeMap<Option<Accessed>>,
}

/// The accesses since the last [`AccessRecorder::take`], each with its latest time.
#[derive(Debug, Default)]
pub struct AccessRecorder {
    noted: Mutex<Noted>,
}

impl AccessRecorder {
    pub fn new() -> Arc<AccessRecorder> {
        Arc::new(AccessRecorder::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Noted> {
        self.noted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `what` at `at` (a later time wins).
    pub fn record(&self, what: Accessed, at: Millis) {
        keep_later(&mut self.lock().by_path, what, at);
    }

    /// Notes a read of link inode `node` at `at`; `what` tells what the inode is, asked
    /// only at its first read (outside the lock).
    pub fn record_read(&self, node: u64, at: Millis, what: impl FnOnce() -> Option<Accessed>) {
        {
            let mut noted = self.lock();
            match noted.nodes.get(&node) {
                Some(None) => return,
                Some(Some(_)) => return keep_later(&mut noted.reads, node, at),
                None => {}
            }
        }
        let what = what();
        let mut noted = self.lock();
        let known = what.is_some();
        noted.nodes.insert(node, what);
        if known {
            keep_later(&mut noted.reads, node, at);
        }
    }

    /// Everything noted since the last call, each access with its latest time.
    pub fn take(&self) -> HashMap<Accessed, Millis> {
        let (mut out, reads) = {
            let mut noted = self.lock();
            let reads = std::mem::take(&mut noted.reads);
            let by_path = std::mem::take(&mut noted.by_path);
            // What the read inodes are, copied under the lock (a few per flush).
            let reads: Vec<(Accessed, Millis)> = reads
                .into_iter()
                .filter_map(|(n, t)| Some((noted.nodes.get(&n)?.clone()?, t)))
                .collect();
            (by_path, reads)
        };
        for (what, at) in reads {
            keep_later(&mut out, what, at);
        }
        out
    }

    /// How many accesses wait to be taken.
    pub fn pending(&self) -> usize {
        let noted = self.lock();
        noted.by_path.len() + noted.reads.len()
    }
}

/// What reading the link at `path` (relative to the store root) tells, if anything.
fn read_of(path: &str) -> Option<Accessed> {
    match classify(path)? {
        PathKind::TagCurrentLink { repo, tag } => Some(Accessed::TagPulled {
            repo: repo.as_str().to_owned(),
            tag: tag.as_str().to_owned(),
        }),
        PathKind::RevisionLink { repo, digest } => Some(Accessed::ManifestPulled {
            repo: repo.as_str().to_owned(),
            digest,
        }),
        _ => None,
    }
}

/// What writing the file at `path` tells: a push of its tag if it is a current link.
fn write_of(path: &str) -> Option<Accessed> {
    match classify(path)? {
        PathKind::TagCurrentLink { repo, tag } => Some(Accessed::TagPushed {
            repo: repo.as_str().to_owned(),
            tag: tag.as_str().to_owned(),
        }),
        _ => None,
    }
}

/// Records pushes and pulls over the policy `P` (see the module's documentation).
#[derive(Debug)]
pub struct AccessRecording<P> {
    recorder: Arc<AccessRecorder>,
    inner: P,
}

impl<P: StorePolicy> AccessRecording<P> {
    pub fn new(recorder: Arc<AccessRecorder>, inner: P) -> Self {
        AccessRecording { recorder, inner }
    }

    fn note(&self, what: Option<Accessed>) {
        if let Some(w) = what {
            self.recorder.record(w, now_millis());
        }
    }
}

impl<P: StorePolicy> StorePolicy for AccessRecording<P> {
    fn admit_change(&self, change: &Change<'_>) -> FsResult<ChangeLease> {
        let lease = self.inner.admit_change(change)?;
        // Registry 3.x writes `<link>.<uuid>.tmp` and renames it over the current link.
        if let Change::Rename { to, .. } = change {
            self.note(write_of(to.path()));
        }
        Ok(lease)
    }

    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease> {
        let push = writer.role() == WriteRole::Link(LinkRole::TagCurrent);
        let path = writer.path().to_owned();
        let lease = self.inner.admit_writer(writer)?;
        if push {
            self.note(write_of(&path));
        }
        Ok(lease)
    }

    fn is_visible(&self, name: &Name<'_>) -> bool {
        self.inner.is_visible(name)
    }

    fn check_write_access(&self, path: &str) -> FsResult<()> {
        self.inner.check_write_access(path)
    }

    fn note_read(&self, read: LinkRead, path: &dyn Fn() -> String) {
        self.inner.note_read(read, path);
        if matches!(read.link, LinkRole::TagCurrent | LinkRole::Revision(_)) {
            self.recorder
                .record_read(read.node, now_millis(), || read_of(&path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AdmitAll;

    const V2: &str = "docker/registry/v2/repositories";

    fn hex() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn pulls_and_pushes_are_told_by_the_link_read_or_written() {
        let rec = AccessRecorder::new();
        let layer = AccessRecording::new(rec.clone(), AdmitAll);
        let tag = format!("{V2}/team/app/_manifests/tags/v1/current/link");
        let rev = format!("{V2}/team/app/_manifests/revisions/sha256/{}/link", hex());
        let read = |link, node| LinkRead { link, node };
        layer.note_read(read(LinkRole::TagCurrent, 7), &|| tag.clone());
        // The inode is known now: its path is not built again.
        layer.note_read(read(LinkRole::TagCurrent, 7), &|| panic!("built twice"));
        let d = Digest::from_hex(&hex()).unwrap();
        layer.note_read(read(LinkRole::Revision(d), 8), &|| rev.clone());
        layer.note_read(read(LinkRole::Layer(d), 9), &|| {
            panic!("a layer read builds no path")
        });
        let meaning = crate::policy::WriteMeaning::of_path(&tag);
        assert_eq!(meaning.write_role(), WriteRole::Link(LinkRole::TagCurrent));
        let _writer = layer
            .admit_writer(Writer {
                meaning: &meaning,
                undo: None,
            })
            .unwrap();
        let got = rec.take();
        let repo = "team/app".to_string();
        assert!(got.contains_key(&Accessed::TagPulled {
            repo: repo.clone(),
            tag: "v1".into()
        }));
        assert!(got.contains_key(&Accessed::ManifestPulled {
            repo: repo.clone(),
            digest: d
        }));
        assert!(got.contains_key(&Accessed::TagPushed {
            repo,
            tag: "v1".into()
        }));
        assert_eq!(got.len(), 3);
        assert_eq!(rec.pending(), 0);
    }

    #[test]
    fn a_later_time_wins() {
        let rec = AccessRecorder::new();
        let what = Accessed::TagPulled {
            repo: "r".into(),
            tag: "t".into(),
        };
        rec.record(what.clone(), 20);
        rec.record(what.clone(), 10);
        assert_eq!(rec.take()[&what], 20);
    }
}
