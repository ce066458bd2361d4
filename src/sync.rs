//! The synchronisation primitives of the protocols that order writes against deletion
//! (the write gate, the online barrier and its phase). Normally the standard library's;
//! with the `shuttle` feature, shuttle's, so that `tests/online_schedules.rs` can run the
//! protocol under a deterministic scheduler that may switch threads at every lock, atomic
//! and wait in them. Only those modules take their primitives from here.

#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Condvar, Mutex, MutexGuard, atomic};

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Condvar, Mutex, MutexGuard, atomic};
