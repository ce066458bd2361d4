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
    /// Taken back or deleted: nothing of it is guarded any more.
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
            UnitState::Deleting => Claim::BeingDeleted,
            UnitState::Settled => Claim::Free,
        }
    }

    /// Whether `path` lies in a unit the sweep is deleting (a read does not take back).
    pub fn is_being_deleted(&self, path: &str) -> bool {
        self.unit_of(path)
            .is_some_and(|i| self.state[i] == UnitState::Deleting)
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
            self.settle(i);
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
        assert_eq!(d.touch("v2/blobs/sha256/aa/aa11"), Claim::Free);
        assert!(!d.is_hidden("v2/blobs/sha256/aa/aa11"));
        assert!(!d.claim(0));
        assert_eq!(d.resurrected(), 0);
    }

    #[test]
    fn paths_beside_a_unit_are_not_guarded_by_it() {
        let mut d = Doomed::new(vec![blob("aa11")]);
        assert_eq!(d.touch("v2/blobs/sha256/aa/aa111"), Claim::Free);
        assert_eq!(d.touch("v2/blobs/sha256/aa"), Claim::Free);
        assert!(d.claim(0));
    }
}
