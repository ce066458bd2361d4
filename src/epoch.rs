//! The write gate under its former path, for code outside the filesystem that still
//! names it so; the gate itself is [`crate::policy::gate`].

pub use crate::policy::gate::{CloseReport, CutReason, CutWriter, WriteGate};
