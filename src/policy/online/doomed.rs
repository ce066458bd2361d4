//! The units an online run is about to delete, and what may still take each back.
//!
//! Each unit (a blob with its `_layers` links, a revision with its tag history, an empty
//! directory, an old upload) is known by the paths it removes. A write under one of them,
//! or naming what it deletes, takes a unit still `Doomed` back (it is resurrected and the
//! sweep skips it); a unit the sweep has claimed (`Deleting`) refuses such a write until it
//! is gone, after which its paths are ordinary again. The sweep claims a unit only while it
//! is still doomed: a unit is either taken back or deleted, never both.
//!
//! A doomed revision that refers to another manifest (its `subject`: a signature, an
//! SBOM) is kept when that manifest is: a tag moved onto an untagged image keeps its
//! referrers, as the mark would have had the tag been there before the run.

use std::collections::{HashMap, HashSet};

/// What the sweep is to delete as one unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DoomedUnit {
    /// The paths it removes, relative to the store root.
    pub paths: Vec<String>,
    /// A blob directory hidden from lookups while the unit is doomed or being deleted.
    pub hidden: Option<String>,
    /// A revision referring to another manifest of its repository.
    pub referrer: Option<Referrer>,
}

/// What ties a doomed referrer to its subject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Referrer {
    /// The subject's revision directory: keeping it (a write or read that takes it
    /// back, or names it) keeps the referrer.
    pub subject: String,
    /// What keeping the referrer keeps besides its own paths: its manifest's blob and
    /// what it references (read from its manifest before the pause).
    pub reaches: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitState {
    Doomed,
    Deleting,
    /// Deleted by this run: a write naming it is refused (it would name what is gone)
    /// until a write re-creates the unit's main path (a fresh upload, a manifest put
    /// again), which makes it new.
    Deleted,
    /// Taken back, or made new after its deletion: nothing of it is guarded any more.
    Settled,
}

/// What became of a path a write touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing doomed there (or it was taken back just now).
    Free,
    /// The sweep is deleting the unit holding this path.
    BeingDeleted,
}

/// What a cluster's sweep has claimed in one batch of units, as a node learns it when
/// its keeping of a unit there is refused (`policy::online::UnitKeeper`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedBatch {
    /// The units the collector deletes (or deleted).
    pub deleting: Vec<usize>,
    /// Units of the batch that some node kept before the claim: never deleted.
    pub kept: Vec<usize>,
    /// The collector has deleted every unit of `deleting`.
    pub done: bool,
}

#[derive(Debug, Default)]
pub struct Doomed {
    units: Vec<DoomedUnit>,
    state: Vec<UnitState>,
    by_path: HashMap<String, usize>,
    hidden: HashSet<String>,
    /// Subject revision directory -> the doomed referrer units it keeps.
    referrers_of: HashMap<String, Vec<usize>>,
    resurrected: u64,
}

impl Doomed {
    /// `units`, in the plan's order: the sweep names them by index.
    pub fn new(units: Vec<DoomedUnit>) -> Self {
        let mut by_path = HashMap::new();
        let mut hidden = HashSet::new();
        let mut referrers_of: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, u) in units.iter().enumerate() {
            for p in &u.paths {
                by_path.insert(p.clone(), i);
            }
            if let Some(h) = &u.hidden {
                hidden.insert(h.clone());
            }
            if let Some(r) = &u.referrer {
                referrers_of.entry(r.subject.clone()).or_default().push(i);
            }
        }
        Doomed {
            state: vec![UnitState::Doomed; units.len()],
            units,
            by_path,
            hidden,
            referrers_of,
            resurrected: 0,
        }
    }

    /// The doomed set as a cluster's collector hands it to the members: every unit in
    /// the plan's order, and those no longer doomed (taken back by the fold).
    pub fn published(&self) -> (Vec<DoomedUnit>, Vec<usize>) {
        (self.units.clone(), self.taken_back())
    }

    /// A member's copy of the collector's doomed set: `settled` are kept already.
    pub fn from_published(units: Vec<DoomedUnit>, settled: &[usize]) -> Self {
        let mut d = Doomed::new(units);
        d.settle_published(settled);
        d
    }

    /// The units no longer doomed (taken back), by index: what a cluster's collector
    /// tells the members at the pause, beside the planned set they hold.
    pub fn taken_back(&self) -> Vec<usize> {
        (0..self.units.len())
            .filter(|&i| self.state[i] != UnitState::Doomed)
            .collect()
    }

    /// A member applies what the collector took back (`settled`, by index) to its copy:
    /// those units and what they keep are kept, as on the collector. Not counted as
    /// taken back by this node's writes.
    pub fn settle_published(&mut self, settled: &[usize]) {
        let counted = self.resurrected;
        for &i in settled {
            if i < self.units.len() {
                self.settle(i);
            }
        }
        self.resurrected = counted;
    }

    /// Whether unit `i` is still doomed (neither taken back nor claimed).
    pub fn is_doomed(&self, i: usize) -> bool {
        self.state.get(i) == Some(&UnitState::Doomed)
    }

    /// How many units the plan had.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The doomed units that [`take_back`](Self::take_back)`(own, named)` could take
    /// back, with their referrers and what those reach (a superset: every unit holding a
    /// path above a named one is counted). Changes nothing: in a cluster these are kept
    /// in etcd before the node takes them back.
    pub fn reach(&self, own: &str, named: &[String]) -> Vec<usize> {
        let mut seen = HashSet::new();
        let mut work = Vec::new();
        if let Some(i) = self.renewed_by(own) {
            seen.insert(i);
            work.push(i);
        }
        for p in std::iter::once(own).chain(named.iter().map(String::as_str)) {
            self.doomed_above(p, &mut seen, &mut work);
            self.referrers_reach(p, &mut seen, &mut work);
        }
        let mut out = Vec::new();
        while let Some(i) = work.pop() {
            if self.state[i] == UnitState::Doomed {
                out.push(i);
            }
            if let Some(main) = self.units[i].paths.last() {
                self.referrers_reach(main, &mut seen, &mut work);
            }
            if let Some(r) = &self.units[i].referrer {
                for p in &r.reaches {
                    self.doomed_above(p, &mut seen, &mut work);
                    self.referrers_reach(p, &mut seen, &mut work);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Every doomed unit holding `path` or a directory above it.
    fn doomed_above(&self, path: &str, seen: &mut HashSet<usize>, work: &mut Vec<usize>) {
        let mut p = path;
        loop {
            if let Some(&i) = self.by_path.get(p)
                && self.state[i] == UnitState::Doomed
                && seen.insert(i)
            {
                work.push(i);
            }
            match p.rfind('/') {
                Some(cut) => p = &p[..cut],
                None => return,
            }
        }
    }

    /// The doomed referrers keeping `subject` would keep (as `keep_referrers_of`).
    fn referrers_reach(&self, subject: &str, seen: &mut HashSet<usize>, work: &mut Vec<usize>) {
        for &j in self.referrers_of.get(subject).into_iter().flatten() {
            let whole = self.units[j]
                .referrer
                .as_ref()
                .is_some_and(|r| !r.reaches.iter().any(|p| self.is_being_deleted(p)));
            if self.state[j] == UnitState::Doomed && whole && seen.insert(j) {
                work.push(j);
            }
        }
    }

    /// What a node learnt of a batch the cluster's sweep claimed: its listed units are
    /// being deleted here too (deleted, once the batch is done). Nothing is taken back.
    pub fn learn(&mut self, batch: &ClaimedBatch) {
        for &i in &batch.deleting {
            if self.state.get(i) == Some(&UnitState::Doomed) {
                self.state[i] = UnitState::Deleting;
            }
            if batch.done {
                self.release(i);
            }
        }
    }

    /// The collector's sweep takes unit `i`, which its batch's claim in etcd lists: as
    /// [`claim`](Self::claim), and also when this node learnt that claim already.
    pub fn claim_claimed(&mut self, i: usize) -> bool {
        match self.state.get(i) {
            Some(UnitState::Doomed | UnitState::Deleting) => {
                self.state[i] = UnitState::Deleting;
                true
            }
            _ => false,
        }
    }

    /// Units taken back so far.
    pub fn resurrected(&self) -> u64 {
        self.resurrected
    }

    pub fn is_hidden(&self, path: &str) -> bool {
        self.hidden.contains(path)
    }

    /// The blob directories hidden now.
    pub fn hidden(&self) -> impl Iterator<Item = &str> {
        self.hidden.iter().map(String::as_str)
    }

    /// The unit guarding `path`: the one that removes it or a directory above it.
    fn unit_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&i) = self.by_path.get(p) {
                return Some(i);
            }
            match p.rfind('/') {
                Some(cut) => p = &p[..cut],
                None => return None,
            }
        }
    }

    /// A write reaches `path`: a doomed unit holding it is taken back.
    pub fn touch(&mut self, path: &str) -> Claim {
        let claim = match self.unit_of(path).map(|i| (i, self.state[i])) {
            Some((i, UnitState::Doomed)) => {
                self.resurrected += 1;
                self.settle(i);
                Claim::Free
            }
            Some((_, UnitState::Deleting | UnitState::Deleted)) => Claim::BeingDeleted,
            Some((_, UnitState::Settled)) | None => Claim::Free,
        };
        // A manifest kept (its revision directory named) keeps its doomed referrers,
        // even when it had no unit of its own (a subject pushed after its referrer).
        if claim == Claim::Free {
            let mut work = Vec::new();
            self.keep_referrers_of(path, &mut work);
            self.settle_all(work);
        }
        claim
    }

    /// The deleted unit a write at `own` makes new: one whose main path (its last: the
    /// blob or revision directory) holds `own`.
    fn renewed_by(&self, own: &str) -> Option<usize> {
        let i = self.unit_of(own)?;
        let main = self.units[i].paths.last()?;
        let under = own == main
            || own
                .strip_prefix(main.as_str())
                .is_some_and(|r| r.starts_with('/'));
        (self.state[i] == UnitState::Deleted && under).then_some(i)
    }

    /// Whether a write at `own` that names `named` must be refused, and for which path:
    /// one of them lies in a unit being deleted, or in one deleted by this run (other
    /// than the unit the write itself makes new). Nothing changes: a refused write takes
    /// nothing back, so a revision is never kept while its manifest's blob goes.
    pub fn refusal<'a>(&self, own: &'a str, named: &'a [String]) -> Option<&'a str> {
        let renewed = self.renewed_by(own);
        std::iter::once(own)
            .chain(named.iter().map(String::as_str))
            .find(|p| match self.unit_of(p) {
                Some(i) if Some(i) == renewed => false,
                Some(i) => matches!(self.state[i], UnitState::Deleting | UnitState::Deleted),
                None => false,
            })
    }

    /// A write at `own` naming `named` goes ahead (after [`refusal`](Self::refusal)): the
    /// unit it makes new is new, every doomed unit it reaches is taken back.
    pub fn take_back(&mut self, own: &str, named: &[String]) {
        if let Some(i) = self.renewed_by(own) {
            self.settle(i);
        }
        for p in std::iter::once(own).chain(named.iter().map(String::as_str)) {
            self.touch(p);
        }
    }

    /// Whether `path` lies in a unit the sweep is deleting or has deleted (a read does
    /// not take back).
    pub fn is_being_deleted(&self, path: &str) -> bool {
        self.unit_of(path)
            .is_some_and(|i| matches!(self.state[i], UnitState::Deleting | UnitState::Deleted))
    }

    /// The sweep takes unit `i` for deletion; false if it was taken back.
    pub fn claim(&mut self, i: usize) -> bool {
        match self.state.get(i) {
            Some(UnitState::Doomed) => {
                self.state[i] = UnitState::Deleting;
                true
            }
            _ => false,
        }
    }

    /// The sweep is done with unit `i` (deleted, or failed part-way): its paths are
    /// ordinary again, so a new blob written there is a new blob this run never touches.
    pub fn release(&mut self, i: usize) {
        if self.state.get(i) == Some(&UnitState::Deleting) {
            self.state[i] = UnitState::Deleted;
            if let Some(h) = &self.units[i].hidden {
                self.hidden.remove(h);
            }
        }
    }

    /// Unit `i` is kept (taken back, or made new), with the doomed referrers of the
    /// revision it is and everything a kept referrer reaches.
    fn settle(&mut self, i: usize) {
        self.settle_all(vec![i]);
    }

    fn settle_all(&mut self, mut work: Vec<usize>) {
        while let Some(i) = work.pop() {
            if self.state[i] == UnitState::Settled {
                continue;
            }
            self.state[i] = UnitState::Settled;
            for p in &self.units[i].paths {
                if self.by_path.get(p) == Some(&i) {
                    self.by_path.remove(p);
                }
            }
            if let Some(h) = &self.units[i].hidden {
                self.hidden.remove(h);
            }
            if let Some(main) = self.units[i].paths.last().cloned() {
                self.keep_referrers_of(&main, &mut work);
            }
            let reaches = self.units[i]
                .referrer
                .as_ref()
                .map(|r| r.reaches.clone())
                .unwrap_or_default();
            for p in reaches {
                if let Some(k) = self
                    .unit_of(&p)
                    .filter(|k| self.state[*k] == UnitState::Doomed)
                {
                    self.resurrected += 1;
                    work.push(k);
                }
                self.keep_referrers_of(&p, &mut work);
            }
        }
    }

    /// Queues the doomed referrers of the manifest whose revision directory is `subject`.
    /// A referrer part of which the sweep is deleting or deleted is left to go whole: kept,
    /// it would name what is gone.
    fn keep_referrers_of(&mut self, subject: &str, work: &mut Vec<usize>) {
        let Some(refs) = self.referrers_of.remove(subject) else {
            return;
        };
        for j in refs {
            let whole = self.units[j]
                .referrer
                .as_ref()
                .is_some_and(|r| !r.reaches.iter().any(|p| self.is_being_deleted(p)));
            if self.state[j] == UnitState::Doomed && whole {
                self.resurrected += 1;
                work.push(j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(hex: &str) -> DoomedUnit {
        let dir = format!("v2/blobs/sha256/{}/{hex}", &hex[..2]);
        DoomedUnit {
            paths: vec![
                format!("v2/repositories/a/_layers/sha256/{hex}"),
                dir.clone(),
            ],
            hidden: Some(dir),
            referrer: None,
        }
    }

    #[test]
    fn a_write_under_a_doomed_unit_takes_it_back_and_the_sweep_skips_it() {
        let mut d = Doomed::new(vec![blob("aa11"), blob("bb22")]);
        assert!(d.is_hidden("v2/blobs/sha256/aa/aa11"));
        assert_eq!(d.touch("v2/blobs/sha256/aa/aa11/data"), Claim::Free);
        assert!(!d.is_hidden("v2/blobs/sha256/aa/aa11"));
        assert!(!d.claim(0), "a unit taken back is never deleted");
        assert!(d.claim(1));
        assert_eq!(d.resurrected(), 1);
    }

    #[test]
    fn a_unit_being_deleted_refuses_writes_until_released_then_its_paths_are_new() {
        let mut d = Doomed::new(vec![blob("aa11")]);
        assert!(d.claim(0));
        assert_eq!(
            d.touch("v2/repositories/a/_layers/sha256/aa11/link"),
            Claim::BeingDeleted
        );
        assert!(d.is_hidden("v2/blobs/sha256/aa/aa11"));
        d.release(0);
        assert!(!d.is_hidden("v2/blobs/sha256/aa/aa11"));
        // A fresh upload makes the blob directory new...
        assert_eq!(d.refusal("v2/blobs/sha256/aa/aa11", &[]), None);
        d.take_back("v2/blobs/sha256/aa/aa11", &[]);
        assert_eq!(d.touch("v2/blobs/sha256/aa/aa11/data"), Claim::Free);
        assert!(!d.claim(0));
        assert_eq!(d.resurrected(), 0);
    }

    fn revision(repo: &str, hex: &str) -> DoomedUnit {
        DoomedUnit {
            paths: vec![
                format!("v2/repositories/{repo}/_manifests/tags/t/index/sha256/{hex}"),
                format!("v2/repositories/{repo}/_manifests/revisions/sha256/{hex}"),
            ],
            hidden: None,
            referrer: None,
        }
    }

    fn rev_dir(hex: &str) -> String {
        format!("v2/repositories/r/_manifests/revisions/sha256/{hex}")
    }

    /// A revision of `r` referring to `subject`, whose manifest's blob is `hex` and whose
    /// one layer is `layer`.
    fn referrer(hex: &str, subject: &str, layer: &str) -> DoomedUnit {
        DoomedUnit {
            referrer: Some(Referrer {
                subject: rev_dir(subject),
                reaches: vec![
                    format!("v2/blobs/sha256/{}/{hex}", &hex[..2]),
                    rev_dir(hex),
                    format!("v2/blobs/sha256/{}/{layer}", &layer[..2]),
                    format!("v2/repositories/r/_layers/sha256/{layer}"),
                ],
            }),
            ..revision("r", hex)
        }
    }

    #[test]
    fn keeping_a_manifest_keeps_its_doomed_referrers_and_what_they_reference() {
        // aa11: an untagged image; bb22 signs it (layer cc33); dd44 signs the signature.
        let mut d = Doomed::new(vec![
            revision("r", "aa11"),
            referrer("bb22", "aa11", "cc33"),
            referrer("dd44", "bb22", "ee55"),
            blob("bb22"),
            blob("cc33"),
            blob("ee55"),
            blob("ff66"),
        ]);
        // A tag moves onto aa11: its revision is named.
        assert_eq!(d.touch(&rev_dir("aa11")), Claim::Free);
        for kept in 0..6 {
            assert!(!d.claim(kept), "unit {kept} is kept with aa11");
        }
        assert!(d.claim(6), "an unrelated blob still goes");
        assert!(!d.is_hidden("v2/blobs/sha256/cc/cc33"));
    }

    #[test]
    fn a_referrer_whose_layer_is_being_deleted_is_not_kept_broken() {
        let mut d = Doomed::new(vec![
            revision("r", "aa11"),
            referrer("bb22", "aa11", "cc33"),
            blob("cc33"),
        ]);
        assert!(d.claim(2));
        d.touch(&rev_dir("aa11"));
        assert!(d.claim(1), "the referrer goes with its layer");
    }

    #[test]
    fn a_subject_without_a_unit_keeps_its_referrers_when_named() {
        // The referrer was pushed before its subject; the subject arrives mid-run.
        let mut d = Doomed::new(vec![referrer("bb22", "aa11", "cc33"), blob("cc33")]);
        d.take_back(
            "v2/repositories/r/_manifests/revisions/sha256/aa11/link",
            &[rev_dir("aa11")],
        );
        assert!(!d.claim(0));
        assert!(!d.claim(1));
    }

    #[test]
    fn a_link_naming_a_deleted_unit_is_refused_and_takes_nothing_back() {
        // A tag moves onto a manifest whose revision is doomed and whose blob the sweep
        // deleted already: refused, and the revision is not kept without its blob.
        let mut d = Doomed::new(vec![blob("bb22"), revision("r", "bb22")]);
        assert!(d.claim(0));
        d.release(0);
        let own = "v2/repositories/r/_manifests/tags/t/index/sha256/bb22/link".to_string();
        let named = vec![
            "v2/blobs/sha256/bb/bb22".to_string(),
            "v2/repositories/r/_manifests/revisions/sha256/bb22".to_string(),
        ];
        assert_eq!(d.refusal(&own, &named), Some("v2/blobs/sha256/bb/bb22"));
        assert!(d.claim(1), "the revision still goes with its blob");
        d.release(1);
        // After both went, a tag index entry alone does not make the revision new...
        assert!(d.refusal(&own, &named).is_some());
        // ...the revision link written again does, once the blob is new too.
        let rev = "v2/repositories/r/_manifests/revisions/sha256/bb22/link";
        assert!(
            d.refusal(rev, &named).is_some(),
            "its manifest's blob is gone"
        );
        d.take_back("v2/blobs/sha256/bb/bb22", &[]);
        assert_eq!(d.refusal(rev, &named), None);
        d.take_back(rev, &named);
        assert_eq!(d.refusal(&own, &named), None);
    }

    #[test]
    fn reach_counts_every_unit_a_take_back_takes_back_and_changes_nothing() {
        let mut d = Doomed::new(vec![
            revision("r", "aa11"),
            referrer("bb22", "aa11", "cc33"),
            blob("cc33"),
            blob("ff66"),
        ]);
        let own = "v2/repositories/r/_manifests/tags/t/current/link";
        let named = vec![rev_dir("aa11")];
        let reach = d.reach(own, &named);
        assert_eq!(
            reach,
            vec![0, 1, 2],
            "the revision, its referrer, the layer"
        );
        assert!(d.is_doomed(0) && d.is_doomed(1) && d.is_doomed(2));
        d.take_back(own, &named);
        for i in 0..4 {
            assert_eq!(d.is_doomed(i), !reach.contains(&i), "unit {i}");
        }
    }

    #[test]
    fn a_learnt_claim_refuses_writes_and_a_done_batch_lets_them_make_it_new() {
        let mut d = Doomed::new(vec![blob("aa11"), blob("bb22")]);
        d.learn(&ClaimedBatch {
            deleting: vec![0],
            kept: vec![1],
            done: false,
        });
        let link = "v2/repositories/a/_layers/sha256/aa11/link";
        assert!(d.refusal(link, &[]).is_some());
        assert!(
            d.claim_claimed(0),
            "the collector's own sweep still takes it"
        );
        assert!(d.is_doomed(1), "learning a claim takes nothing back");
        d.learn(&ClaimedBatch {
            deleting: vec![0],
            kept: vec![],
            done: true,
        });
        assert_eq!(d.refusal("v2/blobs/sha256/aa/aa11", &[]), None);
    }

    #[test]
    fn a_published_set_keeps_what_the_fold_took_back() {
        let mut d = Doomed::new(vec![blob("aa11"), blob("bb22")]);
        d.touch("v2/blobs/sha256/bb/bb22/data");
        let (units, settled) = d.published();
        assert_eq!(settled, vec![1]);
        let mut m = Doomed::from_published(units, &settled);
        assert!(m.is_hidden("v2/blobs/sha256/aa/aa11"));
        assert!(!m.is_hidden("v2/blobs/sha256/bb/bb22"));
        assert!(!m.claim(1));
        assert!(m.claim(0));
    }

    #[test]
    fn a_planned_set_with_the_delta_applied_is_the_collectors_set() {
        let mut collector = Doomed::new(vec![
            revision("r", "aa11"),
            referrer("bb22", "aa11", "cc33"),
            blob("cc33"),
            blob("dd44"),
            blob("ee55"),
        ]);
        collector.touch("v2/blobs/sha256/ee/ee55/data");
        let (units, planned) = collector.published();
        let mut member = Doomed::from_published(units, &planned);
        // After the planned set went out, a write keeps aa11 (and its referrer's reach).
        collector.touch(&rev_dir("aa11"));
        let delta: Vec<usize> = collector
            .taken_back()
            .into_iter()
            .filter(|i| !planned.contains(i))
            .collect();
        assert_eq!(delta, vec![0, 1, 2]);
        assert!(
            member.is_hidden("v2/blobs/sha256/cc/cc33"),
            "planned: still doomed"
        );
        member.settle_published(&delta);
        for i in 0..5 {
            assert_eq!(member.is_doomed(i), collector.is_doomed(i), "unit {i}");
        }
        assert!(!member.is_hidden("v2/blobs/sha256/cc/cc33"));
        assert_eq!(
            member.resurrected(),
            0,
            "the collector's take-backs, not the member's"
        );
    }

    #[test]
    fn paths_beside_a_unit_are_not_guarded_by_it() {
        let mut d = Doomed::new(vec![blob("aa11")]);
        assert_eq!(d.touch("v2/blobs/sha256/aa/aa111"), Claim::Free);
        assert_eq!(d.touch("v2/blobs/sha256/aa"), Claim::Free);
        assert!(d.claim(0));
    }
}
