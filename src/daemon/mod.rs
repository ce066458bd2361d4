//! The daemon around the mount: GC epochs on a schedule, on signals and on request,
//! with status, stop and a history of runs.

pub mod access_journal;
pub mod access_share;
pub mod epoch;
pub mod history;
pub mod job;
pub mod run_control;
pub mod run_parts;
pub mod runner;
pub mod service;
pub mod status;

pub use service::{Daemon, JobObserver, ServedStore, TriggerError};
pub mod control;
pub mod notify;
pub mod online_run;
pub mod prune_stage;
pub mod retention;
pub mod retention_state;
pub mod scheduler;
pub mod signals;
pub mod temp_search;
