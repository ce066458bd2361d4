//! Differential tests: the same sequence of file operations runs on the mount and on a
//! plain temporary directory, and every outcome (values read, sizes, modes, owners,
//! sorted listings, errno of failures) must be the same. Timestamps are never compared.
//!
//! The operations are those the registry performs (see the storage facts: mkdir -p,
//! create without O_TRUNC, ftruncate(0) + rewrite, append, fsync of files and directories,
//! rename over an existing target, readdir, unlink, rmdir, statfs) plus edge cases.
//! Symbolic links, hard links, device nodes and xattrs are refused by regfs on purpose;
//! they are checked separately on the mount only.
#[path = "../common/mod.rs"]
mod common;
mod concurrent;
mod listing;
mod ops;
mod outcome;
mod plan;
mod refused;
mod runner;
