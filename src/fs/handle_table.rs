//! Tables of open file and directory handles, keyed by the `fh` the kernel sends back.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct HandleTable<T> {
    inner: RwLock<(u64, HashMap<u64, Arc<T>>)>,
}

impl<T> HandleTable<T> {
    pub fn new() -> Self {
        HandleTable {
            inner: RwLock::new((0, HashMap::new())),
        }
    }

    pub fn insert(&self, value: T) -> u64 {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.0 += 1;
        let fh = t.0;
        t.1.insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.1.get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        t.1.remove(&fh)
    }
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        Self::new()
    }
}
