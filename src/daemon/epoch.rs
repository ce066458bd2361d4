//! How a run shares its epoch with the other nodes serving the same store. A node alone
//! has nobody to ask ([`Alone`]); `crate::cluster` coordinates several through etcd.
//! The runner calls these at four points and knows nothing else of a cluster.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gc::Claims;
use crate::policy::online::{Doomed, Sweeping, UnitKeeper, WriteRecord};

use super::job::Job;
pub use super::job::{ClusterRun, MemberDrain};

/// A member as `status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub node: String,
    /// `open`, `closed` (in an epoch), `online` (in another node's online run, writable),
    /// `collecting`, `fenced` (lost etcd) or `starting`.
    pub state: String,
    pub mountpoint: String,
    /// The machine and process that hold the name (empty, 0: not said).
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
}

/// The cluster as this node sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    pub members: Vec<MemberView>,
    /// The node collecting now, if an epoch is on.
    pub collector: Option<String>,
    pub epoch: Option<u64>,
    /// When the read of the members and the epoch from etcd began (what they show was in
    /// etcd then or later): `status` reads them at once when etcd answers within its
    /// deadline, else shows what the member agent last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<DateTime<Utc>>,
    /// Set when this node cannot reach etcd (it refuses writes until it can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a run asks of the nodes it shares the store with.
pub trait EpochCoordinator: Send + Sync {
    /// Before a job starts: claim the one epoch for this node (`online`: an online run,
    /// whose members keep writing). `Err` says why not (another node collects, etcd
    /// unreachable); then no job starts here.
    fn begin(&self, job: u64, online: bool) -> Result<(), String>;
    /// With this node's gate closed and drained: waits until every other live member has
    /// closed and acknowledged. `Err`: the run must delete nothing.
    fn acknowledge(
        &self,
        own: MemberDrain,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Option<ClusterRun>, String>;
    /// Whether this node surely still holds its epoch (checked before every unit the run
    /// marks or sweeps): a collector stalled past its lease must not go on deleting.
    fn still_held(&self) -> bool;
    /// The run is over (every path, a panic included): the members reopen.
    fn end(&self, job: &Job);
    /// Whether a scheduled tick at `tick` starts a run on this node (one node per tick).
    fn claim_tick(&self, tick: DateTime<Utc>) -> bool;
    /// Members and collector, for `status`.
    fn view(&self) -> Option<ClusterView>;
    /// The cluster's side of an online run (none for a node alone).
    fn online(&self) -> Option<&dyn OnlineCoordinator> {
        None
    }
    /// `regfs gc stop` on a node that does not collect: stops the cluster's run, if one
    /// is on. `Ok(Some(epoch))`: asked; `Ok(None)`: no run on.
    fn stop_cluster_run(&self) -> Result<Option<u64>, String> {
        Ok(None)
    }
}

/// What the collector of a cluster's online run asks of the members, in order
/// (`ARCHITECTURE.md`, the online run across the cluster). Every call waits at most
/// `timeout` and stops when `give_up` says so; `Err`: the run must delete nothing.
pub trait OnlineCoordinator: Send + Sync {
    /// Before the pause, every node still writable: gives every member that acknowledged
    /// the run the planned doomed set (`doomed`, as the collector holds it now), and
    /// waits until each holds it (not enforced); returns the records each handed over
    /// with it (its writes so far), for the collector to fold in before the pause.
    fn publish_planned(
        &self,
        doomed: &Doomed,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Vec<WriteRecord>, String>;
    /// The pause begins: every member holds its writes and hands over its record since
    /// the planned set; returns them all.
    fn hand_over(
        &self,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Vec<WriteRecord>, String>;
    /// How the collector's own barrier keeps a unit for the cluster during the sweep.
    fn keeper(&self) -> Arc<dyn UnitKeeper>;
    /// Gives every member what `sweeping` took back since the planned set (the delta)
    /// and waits until each has applied it, enforces the result and resumed its writes.
    fn publish(
        &self,
        sweeping: &Sweeping,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<(), String>;
    /// The sweep's claims of `units` units, in batches claimed through etcd.
    fn claims<'a>(&'a self, sweeping: &'a Sweeping, units: usize) -> Box<dyn Claims + 'a>;
    /// The collector's sweep is over: every member ends its part and reports what its
    /// writes did; their sum (members that do not report within `timeout` are left out,
    /// and named in the log).
    fn members_finish(&self, timeout: Duration) -> MembersWrites;
}

/// What the members' writes did during a cluster's online run, summed over the members
/// that reported when their part ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MembersWrites {
    /// Writes refused: they named what the sweep deleted.
    pub refused: u64,
    /// Units the writes took back from the doomed set.
    pub resurrected: u64,
}

/// A node alone: nothing to ask.
pub struct Alone;

impl EpochCoordinator for Alone {
    fn begin(&self, _job: u64, _online: bool) -> Result<(), String> {
        Ok(())
    }
    fn acknowledge(
        &self,
        _own: MemberDrain,
        _give_up: &dyn Fn() -> bool,
    ) -> Result<Option<ClusterRun>, String> {
        Ok(None)
    }
    fn still_held(&self) -> bool {
        true
    }
    fn end(&self, _job: &Job) {}
    fn claim_tick(&self, _tick: DateTime<Utc>) -> bool {
        true
    }
    fn view(&self) -> Option<ClusterView> {
        None
    }
}
