//! A node's name is its own: its member entry (`<prefix>members/<node>`) is the claim,
//! created by a transaction only if no entry of that name exists, under the node's lease,
//! and rewritten only while it is still the entry this node created (its create
//! revision). Two daemons starting at once with one name cannot both win; a daemon whose
//! name is in use is refused at start, told who holds it; no daemon can overwrite another
//! node's entry or take it out of the member list. The claim goes with the lease: a node
//! that dies frees its name when its lease expires, never sooner.
//!
//! A daemon that finds its name held by a process of this same machine that no longer
//! runs (the daemon it replaces, after a crash or a `kill -9`) waits for that lease to
//! expire, then claims the name: restarts need no person. It never takes the name from a
//! lease that still lives, even a dead process's: etcd cannot tell a dead holder from one
//! that is only slow, and a collector counts members by their entries.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

use super::ClusterConfig;
use super::etcd::{Etcd, EtcdError, Kv};
use super::records::{Keys, MemberRecord};

/// Who this process is, as its claim tells the others.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    pub host: String,
    pub machine_id: String,
    pub boot_id: String,
    pub pid: u32,
    pub process_start: u64,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A process's start time (clock ticks after boot), from `/proc/PID/stat`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command (field 2) may hold spaces and ')', so count from its end.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

impl Holder {
    pub fn this_process() -> Holder {
        let pid = std::process::id();
        Holder {
            host: read_trimmed("/proc/sys/kernel/hostname"),
            machine_id: super::machine_id(&super::MACHINE_ID_FILES.map(Path::new))
                .unwrap_or_default(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid,
            process_start: process_start(pid).unwrap_or(0),
        }
    }

    /// Whether `rec` was written by a process of this machine that no longer runs.
    fn outlived(&self, rec: &MemberRecord) -> bool {
        let this_machine = !rec.machine_id.is_empty() && rec.machine_id == self.machine_id;
        // Another boot, or the pid names no process or another one now.
        let gone = rec.boot_id != self.boot_id || process_start(rec.pid) != Some(rec.process_start);
        this_machine && rec.pid != 0 && gone
    }
}

/// The entry of a node in `state`.
pub fn record(
    cfg: &ClusterConfig,
    mountpoint: &str,
    me: &Holder,
    state: &str,
    claimed_at: DateTime<Utc>,
) -> MemberRecord {
    MemberRecord {
        node: cfg.node.clone(),
        mountpoint: mountpoint.to_string(),
        state: state.into(),
        since: Utc::now(),
        host: me.host.clone(),
        machine_id: me.machine_id.clone(),
        boot_id: me.boot_id.clone(),
        pid: me.pid,
        process_start: me.process_start,
        claimed_at,
    }
}

/// What one attempt to claim a name found.
#[derive(Debug)]
pub enum Attempt {
    /// The name is this lease's: the entry's create revision and when it was claimed.
    Held(u64, DateTime<Utc>),
    /// Another lease holds it: its entry.
    Taken(Kv),
}

/// One attempt to claim `rec.node` under `lease`, in one transaction. An entry already
/// under `lease` is this node's own (an earlier attempt whose answer was lost).
pub fn attempt(
    etcd: &Etcd,
    keys: &Keys,
    rec: &MemberRecord,
    lease: i64,
) -> Result<Attempt, EtcdError> {
    let value = serde_json::to_vec(rec).unwrap_or_default();
    match etcd.create_or_get(&keys.member(&rec.node), &value, lease)? {
        Ok(revision) => Ok(Attempt::Held(revision, rec.claimed_at)),
        Err(kv) if kv.lease == lease => {
            let at = serde_json::from_slice::<MemberRecord>(&kv.value)
                .map(|r| r.claimed_at)
                .unwrap_or(rec.claimed_at);
            Ok(Attempt::Held(kv.create_revision, at))
        }
        Err(kv) => Ok(Attempt::Taken(kv)),
    }
}

/// Who holds a name, for the refusal: "pid 1234 on host reg-2 (machine 3d12…, mount
/// point /srv/registry) since 2026-12-07T02:14:19Z".
pub fn holder(kv: &Kv) -> String {
    match serde_json::from_slice::<MemberRecord>(&kv.value) {
        Ok(r) if r.pid != 0 => format!(
            "pid {} on host {} (machine {}, mount point {}) since {}",
            r.pid,
            if r.host.is_empty() { "?" } else { &r.host },
            if r.machine_id.is_empty() {
                "id unknown"
            } else {
                &r.machine_id
            },
            r.mountpoint,
            r.claimed_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        Ok(r) => format!(
            "a node at mount point {} that does not say which process it is (an older regfs)",
            r.mountpoint
        ),
        Err(_) => "an entry regfs cannot read".into(),
    }
}

/// The refusal of a name in use.
pub fn in_use(cfg: &ClusterConfig, kv: &Kv) -> String {
    format!(
        "cluster: node name {:?} is in use: held by {}, under etcd lease {:x}. Give this \
         daemon a name no other node uses (--cluster-node NAME or `node` in [cluster]), or \
         stop the daemon that holds it; a holder that died frees the name when its lease \
         expires (lease_ttl, {}s here)",
        cfg.node,
        holder(kv),
        kv.lease,
        cfg.lease_ttl.as_secs()
    )
}

/// The name of a cluster node, claimed in etcd before the mount serves. Dropped without
/// becoming a [`Node`](super::Node), it gives the lease (and the name) back.
pub struct Claimed {
    parts: Option<Parts>,
}

pub(super) struct Parts {
    pub cfg: ClusterConfig,
    pub mountpoint: String,
    pub me: Holder,
    pub etcd: Etcd,
    /// The lease, when its grant was sent, and the claim under it; None without etcd.
    pub held: Option<Held>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub lease: i64,
    pub sent: Instant,
    pub revision: u64,
    pub at: DateTime<Utc>,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.parts.as_ref();
        f.debug_struct("Claimed")
            .field("node", &p.map(|p| &p.cfg.node))
            .field("held", &p.map(|p| p.held))
            .finish()
    }
}

impl Claimed {
    /// Takes a lease and claims `cfg.node` under it, for a daemon serving `mountpoint`.
    /// Err: the name is in use (the message names the holder), after waiting for the
    /// lease of a holder that was a process of this machine and no longer runs. Without
    /// etcd the node starts fenced and claims its name once etcd answers.
    pub fn take(cfg: &ClusterConfig, mountpoint: &str) -> Result<Claimed, String> {
        let etcd = cfg.client(cfg.call_timeout()).map_err(|e| e.to_string())?;
        let keys = Keys::new(&cfg.prefix);
        let me = Holder::this_process();
        let mut held = None;
        let mut waited_for = None;
        loop {
            let sent = Instant::now();
            let claimed = etcd
                .grant(cfg.lease_ttl.as_secs().max(1))
                .and_then(|lease| {
                    let rec = record(cfg, mountpoint, &me, "starting", Utc::now());
                    let got = attempt(&etcd, &keys, &rec, lease);
                    if !matches!(got, Ok(Attempt::Held(..))) {
                        let _ = etcd.revoke(lease);
                    }
                    got.map(|a| (lease, a))
                });
            match claimed {
                Ok((lease, Attempt::Held(revision, at))) => {
                    held = Some(Held {
                        lease,
                        sent,
                        revision,
                        at,
                    });
                    tracing::info!(node = %cfg.node, lease, "cluster: node name claimed");
                    break;
                }
                Ok((_, Attempt::Taken(kv))) => {
                    let outlived = serde_json::from_slice::<MemberRecord>(&kv.value)
                        .is_ok_and(|r| me.outlived(&r));
                    if !outlived || waited_for == Some(kv.create_revision) {
                        return Err(in_use(cfg, &kv));
                    }
                    let within = match etcd.time_to_live(kv.lease) {
                        Ok(left) => left.unwrap_or_default(),
                        Err(_) => cfg.lease_ttl,
                    } + Duration::from_secs(2);
                    tracing::warn!(node = %cfg.node, holder = %holder(&kv), ?within,
                        "cluster: this node's name is still held by a process of this machine that no longer runs; waiting for its lease to expire");
                    wait_gone(&etcd, &keys.member(&cfg.node), kv.create_revision, within);
                    waited_for = Some(kv.create_revision);
                }
                Err(e) if e.is_credentials() => {
                    return Err(format!("cluster: etcd refuses this node: {e}"));
                }
                Err(e) => {
                    tracing::error!(node = %cfg.node, error = %e,
                        "cluster: cannot reach etcd at start; the store refuses writes until this node has claimed its name");
                    break;
                }
            }
        }
        Ok(Claimed {
            parts: Some(Parts {
                cfg: cfg.clone(),
                mountpoint: mountpoint.to_string(),
                me,
                etcd,
                held,
            }),
        })
    }

    pub(super) fn into_parts(mut self) -> Parts {
        self.parts.take().expect("a claim is used once")
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if let Some(Parts {
            etcd,
            held: Some(h),
            ..
        }) = self.parts.take()
            && let Err(e) = etcd.revoke(h.lease)
        {
            tracing::warn!(error = %e, "cluster: cannot give the lease back; it expires after its TTL");
        }
    }
}

/// Waits (at most `within`) until the entry `key` created at `revision` is gone.
fn wait_gone(etcd: &Etcd, key: &str, revision: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match etcd.get(key) {
            Ok(Some(kv)) if kv.create_revision == revision => {}
            Ok(_) => return,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec_of(me: &Holder) -> MemberRecord {
        let cfg = ClusterConfig {
            endpoints: vec![],
            node: "n".into(),
            lease_ttl: Duration::from_secs(2),
            prefix: "/regfs/".into(),
            access: Default::default(),
        };
        record(&cfg, "/mnt", me, "open", Utc::now())
    }

    #[test]
    fn only_a_process_of_this_machine_that_no_longer_runs_is_outlived() {
        let me = Holder::this_process();
        assert!(me.pid != 0 && me.process_start != 0, "{me:?}");
        assert!(!me.outlived(&rec_of(&me)), "this process still runs");
        let dead = rec_of(&Holder {
            process_start: me.process_start + 1,
            ..me.clone()
        });
        assert!(me.outlived(&dead), "the pid now names another process");
        let rebooted = rec_of(&Holder {
            boot_id: "another boot".into(),
            ..me.clone()
        });
        assert!(me.outlived(&rebooted));
        let elsewhere = rec_of(&Holder {
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            boot_id: "another boot".into(),
            ..me.clone()
        });
        assert!(
            !me.outlived(&elsewhere),
            "another machine's process is never judged"
        );
        let unknown = rec_of(&Holder {
            machine_id: String::new(),
            ..me.clone()
        });
        assert!(!me.outlived(&unknown));
    }
}
