//! The registry regfs serves: its configuration, and its blob-descriptor cache, which
//! must not outlive a GC run.

pub mod cache;
pub mod config;
pub mod procs;
pub mod redis;

pub use cache::{CacheStatus, RegistrySettings};
pub use config::{CacheKind, RegistryConfig, RegistryConfigError};
