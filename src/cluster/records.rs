//! What the nodes keep in etcd, under the cluster's prefix:
//!
//! ```text
//! <prefix>members/<node>        MemberRecord, under the node's lease (gone when it dies):
//!                               the node's claim of its name, created by a transaction
//!                               only if absent, rewritten only by the node that created
//!                               it (while its create revision is the one it made)
//! <prefix>epoch                 EpochRecord, under the collector's lease; created by a
//!                               transaction only if absent: its create revision is the
//!                               epoch's number, and at most one exists
//! <prefix>acks/<epoch>/<node>   MemberDrain, under the member's lease: closed and drained
//! <prefix>ticks/<time>          the node that claimed a scheduled tick
//! <prefix>jobs/<epoch>          the collector's job record (kept; the oldest are pruned)
//! <prefix>stop/<epoch>          `regfs gc stop` given on a node that does not collect
//! <prefix>online/<epoch>/...    an online run's records, doomed set, keeps and claims
//!                               (`cluster::online`, ARCHITECTURE.md)
//! <prefix>access/<node>/<repo>  SharedTimes: the latest push and pull times the node saw
//!                               in the repository (no lease: a stopped node's pulls still
//!                               count; `/` and `%` in the node's name escaped)
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A member's entry, and its claim of its name: who holds it, where and since when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub node: String,
    pub mountpoint: String,
    /// `open`, `closed`, `online`, `collecting` or `starting` (a fenced node cannot say
    /// so: its entry expires).
    pub state: String,
    /// When it entered that state.
    pub since: DateTime<Utc>,
    /// The machine's hostname, for people.
    #[serde(default)]
    pub host: String,
    /// The machine's id (`/etc/machine-id`); empty if it has none.
    #[serde(default)]
    pub machine_id: String,
    /// The kernel's boot id: the same machine id with another boot id is a reboot.
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub pid: u32,
    /// The process's start time (clock ticks after boot): a pid used again by another
    /// process is not taken for the holder.
    #[serde(default)]
    pub process_start: u64,
    /// When this holder claimed the name.
    #[serde(default)]
    pub claimed_at: DateTime<Utc>,
}

/// The one epoch on, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub collector: String,
    /// The collector's job number (in its own history).
    pub job: u64,
    pub started_at: DateTime<Utc>,
    /// Read-only: `closing` (waiting for members), then `collecting`. Online:
    /// `recording`, `planned`, `pausing`, `sweeping`, `ending` (`ARCHITECTURE.md`).
    pub phase: String,
    /// `online` for an online run; empty (older nodes write none) for a read-only one.
    #[serde(default)]
    pub mode: String,
}

/// The mode of an online epoch, in [`EpochRecord::mode`].
pub const ONLINE: &str = "online";

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }
    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    pub fn acks(&self, epoch: u64) -> String {
        format!("{}acks/{epoch}/", self.prefix)
    }
    pub fn ack(&self, epoch: u64, node: &str) -> String {
        format!("{}acks/{epoch}/{node}", self.prefix)
    }
    pub fn tick(&self, tick: DateTime<Utc>) -> String {
        format!("{}ticks/{}", self.prefix, tick.format("%Y%m%dT%H%M%SZ"))
    }
    /// `regfs gc stop` given on any node for `epoch`.
    pub fn stop(&self, epoch: u64) -> String {
        format!("{}stop/{epoch}", self.prefix)
    }
    /// Everything of an online run, under the collector's lease.
    pub fn online(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/", self.prefix)
    }
    pub fn records(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/records/", self.prefix)
    }
    pub fn record(&self, epoch: u64, node: &str) -> String {
        format!("{}online/{epoch}/records/{node}", self.prefix)
    }
    pub fn doomed(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/doomed/", self.prefix)
    }
    pub fn doomed_chunk(&self, epoch: u64, chunk: usize) -> String {
        format!("{}online/{epoch}/doomed/{chunk:08}", self.prefix)
    }
    pub fn settled(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/settled", self.prefix)
    }
    pub fn planned(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/planned/", self.prefix)
    }
    pub fn planned_by(&self, epoch: u64, node: &str) -> String {
        format!("{}online/{epoch}/planned/{node}", self.prefix)
    }
    pub fn delta(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/delta", self.prefix)
    }
    pub fn finished(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/finished/", self.prefix)
    }
    pub fn finished_by(&self, epoch: u64, node: &str) -> String {
        format!("{}online/{epoch}/finished/{node}", self.prefix)
    }
    pub fn loaded(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/loaded/", self.prefix)
    }
    pub fn loaded_by(&self, epoch: u64, node: &str) -> String {
        format!("{}online/{epoch}/loaded/{node}", self.prefix)
    }
    pub fn kept(&self, epoch: u64) -> String {
        format!("{}online/{epoch}/kept/", self.prefix)
    }
    pub fn kept_unit(&self, epoch: u64, unit: usize) -> String {
        format!("{}online/{epoch}/kept/{unit:010}", self.prefix)
    }
    pub fn claimed(&self, epoch: u64, batch: usize) -> String {
        format!("{}online/{epoch}/claimed/{batch:08}", self.prefix)
    }
    pub fn done(&self, epoch: u64, batch: usize) -> String {
        format!("{}online/{epoch}/done/{batch:08}", self.prefix)
    }
    pub fn jobs(&self) -> String {
        format!("{}jobs/", self.prefix)
    }
    /// Every node's access times.
    pub fn access(&self) -> String {
        format!("{}access/", self.prefix)
    }
    /// One node's access times of one repository (the node's name escaped, so no two
    /// node and repository pairs share a key).
    pub fn access_of(&self, node: &str, repo: &str) -> String {
        let node = node.replace('%', "%25").replace('/', "%2F");
        format!("{}access/{node}/{repo}", self.prefix)
    }
    /// Zero-padded, so key order is epoch order.
    pub fn job(&self, epoch: u64) -> String {
        format!("{}jobs/{epoch:020}", self.prefix)
    }
}
