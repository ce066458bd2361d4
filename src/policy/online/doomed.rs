//! The units an online run is about to delete, and what may still take each back.
//!
//! Each unit (a blob with its `_layers` links, a revision with its tag history, an empty
//! directory, an old upload) is known by the paths it removes. A write under one of them,
//! or naming what it deletes, takes a unit still `Doomed` back (it is resurrected and the
//! sweep skips it); a unit the sweep has claimed (`Deleting`) refuses such a write until it
//! is gone, after which its paths are ordinary again. The sweep claims a unit only while it
//! is still doomed: a unit is either taken back or deleted, never both.

use std::collections::{HashMap, HashSet};

/// What the sweep is to delete as one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoomedUnit {
    /// The paths it removes, relative to the store root.
    pub paths: Vec<String>,
    /// A blob directory hidden from lookups while the unit is doomed or being deleted.
    pub hidden: Option<String>,
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

#[derive(Debug, Default)]
pub struct Doomed {
    units: Vec<DoomedUnit>,
    state: Vec<UnitState>,
    by_path: HashMap<String, usize>,
    hidden: HashSet<String>,
    resurrected: u64,
}

impl Doomed {
    /// `units`, in the plan's order: the sweep names them by index.
    pub fn new(units: Vec<DoomedUnit>) -> Self {
        let mut by_path = HashMap::new();
        let mut hidden = HashSet::new();
        for (i, u) in units.iter().enumerate() {
            for p in &u.paths {
                by_path.insert(p.clone(), i);
            }
            if let Some(h) = &u.hidden {
                hidden.insert(h.clone());
            }
        }
        Doomed {
            state: vec![UnitState::Doomed; units.len()],
            units,
            by_path,
            hidden,
            resurrected: 0,
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
        let Some(i) = self.unit_of(path) else {
            return Claim::Free;
        };
        match self.state[i] {
            UnitState::Doomed => {
                self.settle(i);
                self.resurrected += 1;
                Claim::Free
            }
            UnitState::Deleting | UnitState::Deleted => Claim::BeingDeleted,
            UnitState::Settled => Claim::Free,
        }
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

    fn settle(&mut self, i: usize) {
        self.state[i] = UnitState::Settled;
        for p in &self.units[i].paths {
            if self.by_path.get(p) == Some(&i) {
                self.by_path.remove(p);
            }
        }
        if let Some(h) = &self.units[i].hidden {
            self.hidden.remove(h);
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
        }
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
    fn paths_beside_a_unit_are_not_guarded_by_it() {
        let mut d = Doomed::new(vec![blob("aa11")]);
        assert_eq!(d.touch("v2/blobs/sha256/aa/aa111"), Claim::Free);
        assert_eq!(d.touch("v2/blobs/sha256/aa"), Claim::Free);
        assert!(d.claim(0));
    }
}
