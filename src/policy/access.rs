//! Access times: when each tag's `current/link` was last written (a push) and when each
//! tag or manifest was last read by the registry (a pull: a GET or HEAD by tag reads the
//! tag's current link, one by digest the manifest's revision link). The CNCF registry
//! records no pull times at all; regfs sees every read it makes.
//!
//! A layer over the rest of the chain ([`AccessRecording`]), outermost, so it records
//! only what the inner layers admitted (a push refused by the gate or the link check is
//! no push). What it records goes to an [`AccessRecorder`]: a map in memory, updated
//! under a short lock and keyed by what was accessed, so a thousand pulls of one tag
//! between two flushes are one entry. Nothing is written on the request's path: the
//! daemon's journal (`daemon::access_journal`) takes the map in the background.
//!
//! Reads of `_layers` links (one per blob a pull fetches) and of tag index links are not
//! looked at: the layer tells them apart by the link's role, before any path is built.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Change, ChangeLease, Name, StorePolicy, WriteRole, Writer, WriterLease};
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

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// The accesses since the last [`AccessRecorder::take`], each with its latest time.
#[derive(Debug, Default)]
pub struct AccessRecorder {
    pending: Mutex<HashMap<Accessed, Millis>>,
}

impl AccessRecorder {
    pub fn new() -> Arc<AccessRecorder> {
        Arc::new(AccessRecorder::default())
    }

    /// Notes `what` at `at` (a later time wins).
    pub fn record(&self, what: Accessed, at: Millis) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let t = pending.entry(what).or_insert(at);
        if *t < at {
            *t = at;
        }
    }

    /// Everything noted since the last call, leaving the map empty.
    pub fn take(&self) -> HashMap<Accessed, Millis> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many accesses wait to be taken.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
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
            self.note(write_of(to));
        }
        Ok(lease)
    }

    fn admit_writer(&self, writer: Writer<'_>) -> FsResult<WriterLease> {
        let path = writer.path;
        let push = writer.role == WriteRole::Link(LinkRole::TagCurrent);
        let lease = self.inner.admit_writer(writer)?;
        if push {
            self.note(write_of(path));
        }
        Ok(lease)
    }

    fn is_visible(&self, name: &Name<'_>) -> bool {
        self.inner.is_visible(name)
    }

    fn check_write_access(&self, path: &str) -> FsResult<()> {
        self.inner.check_write_access(path)
    }

    fn note_read(&self, link: LinkRole, path: &dyn Fn() -> String) {
        self.inner.note_read(link, path);
        if matches!(link, LinkRole::TagCurrent | LinkRole::Revision(_)) {
            self.note(read_of(&path()));
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
        let layer_link = format!("{V2}/team/app/_layers/sha256/{}/link", hex());
        layer.note_read(LinkRole::TagCurrent, &|| tag.clone());
        let d = Digest::from_hex(&hex()).unwrap();
        layer.note_read(LinkRole::Revision(d), &|| rev.clone());
        layer.note_read(LinkRole::Layer(d), &|| {
            panic!("a layer read builds no path")
        });
        let _ = layer_link;
        let _writer = layer
            .admit_writer(Writer {
                path: &tag,
                role: WriteRole::Link(LinkRole::TagCurrent),
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
