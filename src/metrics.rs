//! Prometheus metrics: GC runs by trigger and outcome, durations, read-only seconds,
//! what runs deleted, bytes freed, the current state, the last successful run, and FUSE
//! operations and errors by kind. Served at `/metrics` on the HTTP listener
//! (`--http-listen`, see [`crate::api`]) in the Prometheus text format (0.0.4), written
//! by `prometheus-client` from a snapshot taken at each scrape.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::daemon::job::{Job, JobOutcome};
use crate::daemon::status::{Descriptors, State};
use crate::daemon::{Daemon, JobObserver};
use crate::gc::Counts;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the pause histogram's buckets, in seconds.
const PAUSE_BUCKETS: [f64; 6] = [0.001, 0.01, 0.1, 1.0, 10.0, 60.0];
/// Upper bounds of the run duration histogram's buckets, in seconds.
const DURATION_BUCKETS: [f64; 6] = [1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0];

/// Observations in buckets: their sum, count, and how many fell in each bucket (the
/// rest above the last bound).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    in_bucket: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            in_bucket: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.in_bucket[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// GC figures accumulated over every run in the history.
#[derive(Debug, Clone)]
pub struct GcStats {
    /// By mode, trigger and outcome.
    runs: HashMap<(String, String, String), u64>,
    pause: Histogram,
    pause_max: f64,
    resurrected: u64,
    refused_writes: u64,
    /// The store's own size after the last run that measured it.
    store_bytes: Option<u64>,
    duration: Histogram,
    read_only_seconds: f64,
    deleted: HashMap<&'static str, u64>,
    bytes_freed: u64,
    last_success: Option<i64>,
}

impl Default for GcStats {
    fn default() -> GcStats {
        GcStats {
            runs: HashMap::new(),
            pause: Histogram::new(&PAUSE_BUCKETS),
            pause_max: 0.0,
            resurrected: 0,
            refused_writes: 0,
            store_bytes: None,
            duration: Histogram::new(&DURATION_BUCKETS),
            read_only_seconds: 0.0,
            deleted: HashMap::new(),
            bytes_freed: 0,
            last_success: None,
        }
    }
}

/// Each kind of deletion the metrics count, and where a run's report holds it.
type DeletedCount = fn(&Counts) -> u64;
const DELETED_KINDS: [(&str, DeletedCount); 6] = [
    ("blobs", |c| c.blobs_deleted),
    ("manifests", |c| c.manifests_removed),
    ("layer_links", |c| c.layer_links_removed),
    ("uploads", |c| c.uploads_removed),
    ("temp_files", |c| c.temp_files_removed),
    ("directories", |c| c.dirs_removed),
];

/// A variant's name as a label value: `ReadOnly` → `read_only`.
fn lower(v: &dyn std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

impl GcStats {
    pub fn add(&mut self, job: &Job) {
        *self
            .runs
            .entry((
                job.settings.mode.clone(),
                lower(&job.trigger),
                lower(&job.outcome),
            ))
            .or_default() += 1;
        if job.settings.mode == "online" {
            self.pause.observe(job.pause_seconds);
            self.pause_max = self.pause_max.max(job.pause_seconds);
            self.resurrected += job.resurrected;
        }
        self.refused_writes += job.refused_writes;
        if let Some(b) = job.store_bytes {
            self.store_bytes = Some(b);
        }
        if let Some(end) = job.ended_at {
            self.duration
                .observe((end - job.started_at).num_milliseconds().max(0) as f64 / 1000.0);
        }
        self.read_only_seconds += job.read_only_seconds;
        if let Some(c) = job.report.as_ref().map(|r| r.counts()) {
            for (kind, count) in DELETED_KINDS {
                *self.deleted.entry(kind).or_default() += count(c);
            }
            self.bytes_freed += c.bytes_freed;
        }
        if job.outcome == JobOutcome::Done {
            let t = job.ended_at.unwrap_or(job.started_at).timestamp();
            self.last_success = Some(self.last_success.map_or(t, |l| l.max(t)));
        }
    }
}

/// The figures of every job the daemon ends (and of those its history held at start).
impl JobObserver for Mutex<GcStats> {
    fn job_ended(&self, job: &Job) {
        self.lock().unwrap_or_else(|e| e.into_inner()).add(job);
    }
}

/// Everything `/metrics` shows, taken at once.
#[derive(Debug)]
struct Scrape {
    gc: GcStats,
    state: State,
    mode: String,
    read_only: bool,
    /// Whether regfs can keep the registry's blob-descriptor cache right after GC.
    cache_safe: Option<bool>,
    descriptors: Option<Descriptors>,
    fuse_ops: Vec<(&'static str, u64)>,
    fuse_errors: Vec<((&'static str, i32), u64)>,
    fsyncs_answered: u64,
}

type Fmt = Result<(), std::fmt::Error>;

/// One metric without labels.
fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> Fmt {
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: impl EncodeCounterValue) -> Fmt {
    single(enc, name, help, ConstCounter::new(v))
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: impl EncodeGaugeValue) -> Fmt {
    single(enc, name, help, ConstGauge::new(v))
}

/// One metric with a sample for each label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Fmt {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in rows {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> Fmt {
    let buckets: Vec<(f64, u64)> = h.bounds.iter().copied().zip(h.in_bucket.clone()).collect();
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
}

impl Scrape {
    fn gc(&self, enc: &mut DescriptorEncoder) -> Fmt {
        let gc = &self.gc;
        let mut runs: Vec<_> = gc.runs.iter().collect();
        runs.sort();
        family(
            enc,
            "regfs_gc_runs",
            "GC runs, by mode, trigger and outcome.",
            MetricType::Counter,
            runs.into_iter().map(|((mode, trigger, outcome), n)| {
                (
                    [("mode", mode), ("trigger", trigger), ("outcome", outcome)],
                    ConstCounter::new(*n),
                )
            }),
        )?;
        histogram(
            enc,
            "regfs_gc_pause_seconds",
            "How long online runs held writes back.",
            &gc.pause,
        )?;
        gauge(
            enc,
            "regfs_gc_pause_seconds_max",
            "The longest pause of an online run.",
            gc.pause_max,
        )?;
        counter(
            enc,
            "regfs_gc_resurrected",
            "Units online runs were about to delete and a write took back.",
            gc.resurrected,
        )?;
        counter(
            enc,
            "regfs_gc_refused_writes",
            "Writes GC runs refused: EROFS during read-only runs, writes naming what an online run was deleting.",
            gc.refused_writes,
        )?;
        if let Some(b) = gc.store_bytes {
            gauge(
                enc,
                "regfs_store_blob_bytes",
                "Bytes of blob data in the store after the last run (counted by its mark, less what it deleted).",
                b,
            )?;
        }
        histogram(
            enc,
            "regfs_gc_run_duration_seconds",
            "How long GC runs took.",
            &gc.duration,
        )?;
        counter(
            enc,
            "regfs_gc_read_only_seconds",
            "Seconds the store refused writes for GC.",
            gc.read_only_seconds,
        )?;
        family(
            enc,
            "regfs_gc_deleted",
            "What GC runs deleted, by kind.",
            MetricType::Counter,
            DELETED_KINDS.iter().map(|(kind, _)| {
                (
                    [("kind", *kind)],
                    ConstCounter::new(gc.deleted.get(kind).copied().unwrap_or(0)),
                )
            }),
        )?;
        counter(
            enc,
            "regfs_gc_bytes_freed",
            "Bytes of blobs GC runs deleted.",
            gc.bytes_freed,
        )?;
        gauge(
            enc,
            "regfs_gc_last_success_timestamp_seconds",
            "When the last GC run that finished its work ended.",
            gc.last_success.unwrap_or(0),
        )
    }

    fn daemon(&self, enc: &mut DescriptorEncoder) -> Fmt {
        family(
            enc,
            "regfs_gc_state",
            "The GC state (1 for the current one).",
            MetricType::Gauge,
            [State::Idle, State::Closing, State::Marking, State::Sweeping]
                .into_iter()
                .map(|s| {
                    (
                        [("state", lower(&s))],
                        ConstGauge::new(i64::from(self.state == s)),
                    )
                }),
        )?;
        family(
            enc,
            "regfs_gc_mode",
            "The mode the next GC run uses (1 for the current one).",
            MetricType::Gauge,
            ["read-only", "online"]
                .into_iter()
                .map(|m| ([("mode", m)], ConstGauge::new(i64::from(self.mode == m)))),
        )?;
        gauge(
            enc,
            "regfs_store_read_only",
            "1 while a GC epoch refuses writes.",
            i64::from(self.read_only),
        )?;
        if let Some(safe) = self.cache_safe {
            gauge(
                enc,
                "regfs_registry_cache_safe",
                "1 when regfs can keep the registry's blob-descriptor cache right after GC, 0 when it cannot (runs delete nothing unless allow_unsafe_cache).",
                i64::from(safe),
            )?;
        }
        if let Some(d) = &self.descriptors {
            gauge(
                enc,
                "regfs_fd_limit",
                "The daemon's open-file limit (soft, raised to the hard one at start).",
                d.limit,
            )?;
            gauge(
                enc,
                "regfs_fd_budget",
                "Inode descriptors the daemon keeps open at most.",
                d.budget,
            )?;
            gauge(
                enc,
                "regfs_inode_fds",
                "Inode descriptors the daemon holds now.",
                d.inode_fds,
            )?;
            if let Some(open) = d.open {
                gauge(
                    enc,
                    "regfs_open_fds",
                    "Descriptors open in the daemon now.",
                    open,
                )?;
            }
        }
        Ok(())
    }

    fn fuse(&self, enc: &mut DescriptorEncoder) -> Fmt {
        family(
            enc,
            "regfs_fuse_operations",
            "FUSE requests served, by operation.",
            MetricType::Counter,
            self.fuse_ops
                .iter()
                .map(|(op, n)| ([("op", *op)], ConstCounter::new(*n))),
        )?;
        counter(
            enc,
            "regfs_fsyncs_answered",
            "fsync requests answered without syncing the backing file: it had not changed since an fsync of it.",
            self.fsyncs_answered,
        )?;
        let mut errors = self.fuse_errors.clone();
        errors.sort();
        family(
            enc,
            "regfs_fuse_errors",
            "FUSE requests answered with an error, by operation and errno.",
            MetricType::Counter,
            errors.into_iter().map(|((op, errno), n)| {
                let kind = format!("{:?}", std::io::Error::from_raw_os_error(errno).kind());
                (
                    [
                        ("op", op.to_string()),
                        ("errno", errno.to_string()),
                        ("kind", kind),
                    ],
                    ConstCounter::new(n),
                )
            }),
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        self.gc(&mut enc)?;
        self.daemon(&mut enc)?;
        self.fuse(&mut enc)
    }
}

/// The whole exposition.
pub fn render(daemon: &Daemon, gc: &Mutex<GcStats>) -> String {
    let gc = gc.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let status = daemon.status();
    let stats = daemon.fs().stats();
    let scrape = Scrape {
        gc,
        state: status.state,
        mode: status.mode,
        read_only: status.read_only,
        cache_safe: status.registry_cache.as_ref().map(|c| c.safe),
        descriptors: status.descriptors,
        fuse_ops: stats.operations(),
        fuse_errors: stats.errors(),
        fsyncs_answered: daemon.fs().fsyncs_answered(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(scrape: Scrape) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    /// Every sample name and label the hand-written exposition had is still there
    /// (dashboards and the page read them).
    #[test]
    fn the_exposition_keeps_every_name_and_label() {
        let mut gc = GcStats::default();
        gc.runs
            .insert(("online".into(), "api".into(), "done".into()), 2);
        gc.pause.observe(0.05);
        gc.pause.observe(120.0);
        gc.pause_max = 120.0;
        gc.duration.observe(3.5);
        gc.read_only_seconds = 1.5;
        gc.deleted.insert("blobs", 7);
        gc.bytes_freed = 4096;
        gc.last_success = Some(1_800_000_000);
        let out = exposition(Scrape {
            gc,
            state: State::Marking,
            mode: "online".into(),
            read_only: true,
            cache_safe: Some(true),
            descriptors: Some(Descriptors {
                limit: 1024,
                hard_limit: 4096,
                budget: 512,
                inode_fds: 3,
                open: Some(12),
            }),
            fuse_ops: vec![("lookup", 5), ("create", 1)],
            fuse_errors: vec![(("lookup", 2), 4)],
            fsyncs_answered: 3,
        });
        let samples: HashMap<&str, f64> = out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect();
        for (name, value) in [
            (
                r#"regfs_gc_runs_total{mode="online",trigger="api",outcome="done"}"#,
                2.0,
            ),
            ("regfs_gc_pause_seconds_sum", 120.05),
            ("regfs_gc_pause_seconds_count", 2.0),
            (r#"regfs_gc_pause_seconds_bucket{le="0.1"}"#, 1.0),
            (r#"regfs_gc_pause_seconds_bucket{le="+Inf"}"#, 2.0),
            ("regfs_gc_pause_seconds_max", 120.0),
            ("regfs_gc_resurrected_total", 0.0),
            ("regfs_gc_refused_writes_total", 0.0),
            ("regfs_gc_run_duration_seconds_sum", 3.5),
            ("regfs_gc_run_duration_seconds_count", 1.0),
            ("regfs_gc_read_only_seconds_total", 1.5),
            (r#"regfs_gc_deleted_total{kind="blobs"}"#, 7.0),
            (r#"regfs_gc_deleted_total{kind="directories"}"#, 0.0),
            ("regfs_gc_bytes_freed_total", 4096.0),
            ("regfs_gc_last_success_timestamp_seconds", 1.8e9),
            (r#"regfs_gc_state{state="marking"}"#, 1.0),
            (r#"regfs_gc_state{state="idle"}"#, 0.0),
            (r#"regfs_gc_mode{mode="online"}"#, 1.0),
            (r#"regfs_gc_mode{mode="read-only"}"#, 0.0),
            ("regfs_store_read_only", 1.0),
            ("regfs_fd_limit", 1024.0),
            ("regfs_fd_budget", 512.0),
            ("regfs_inode_fds", 3.0),
            ("regfs_open_fds", 12.0),
            (r#"regfs_fuse_operations_total{op="lookup"}"#, 5.0),
            ("regfs_fsyncs_answered_total", 3.0),
            (
                r#"regfs_fuse_errors_total{op="lookup",errno="2",kind="NotFound"}"#,
                4.0,
            ),
        ] {
            assert_eq!(samples.get(name), Some(&value), "{name} in\n{out}");
        }
        assert!(
            out.contains("# TYPE regfs_gc_runs_total counter\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE regfs_gc_state gauge\n"), "{out}");
        assert!(
            out.contains("# TYPE regfs_gc_pause_seconds histogram\n"),
            "{out}"
        );
    }
}
