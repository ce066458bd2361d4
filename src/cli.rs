//! Command line: clap derive, one subcommand per job. Part of the binary only: the
//! library never sees clap; [`MountArgs::flags`] hands it its own settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use regfs::config::MountFlags;

#[derive(Debug, Parser)]
#[command(
    name = "regfs",
    version,
    about = "Keeps a container registry's storage clean: a FUSE passthrough mount under the registry with a write gate for garbage-collection epochs"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). REGFS_LOG overrides, e.g. REGFS_LOG=regfs=debug.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve STORAGE at MOUNTPOINT in the foreground until unmounted (umount, SIGTERM or SIGINT).
    Mount(Box<MountArgs>),
    /// Collect garbage now: through a running daemon (MOUNTPOINT), or --offline on a store.
    Gc(GcArgs),
    /// Show the state of a mount: read-only or not, the current run, the schedule, the last run.
    Status(StatusArgs),
    /// List past GC runs of a mount.
    Jobs(JobsArgs),
    /// List every tag: the digest it names, when it was pushed and last pulled.
    Tags(TagsArgs),
    /// Tag retention (`[retention]` in the configuration file).
    #[command(subcommand)]
    Retention(RetentionAction),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigAction),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff).
    Man,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The regfs mount point.
    pub mountpoint: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The daemon's state directory, if not the default for MOUNTPOINT.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The regfs mount point.
    pub mountpoint: PathBuf,
    /// Print JSON (one array).
    #[arg(long)]
    pub json: bool,
    /// Show at most the N most recent runs (read from the end of the history: fast
    /// however long it is).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Skip the N most recent runs first (with --limit: page back through the history).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
    /// The daemon's state directory, if not the default for MOUNTPOINT.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// A number of seconds, refused quoting the value as typed (f64 alone takes `nan`, `inf`
/// and negative numbers).
fn seconds(typed: &str) -> Result<f64, String> {
    match typed.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{typed:?} is not a number of seconds")),
    }
}

/// Where a command finds a daemon's state: --state-dir, or the default for the mount point.
pub fn state_dir_for(explicit: &Option<PathBuf>, mountpoint: &std::path::Path) -> PathBuf {
    explicit
        .clone()
        .unwrap_or_else(|| regfs::daemon::control::default_state_dir(mountpoint))
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GcArgs {
    #[command(subcommand)]
    pub action: Option<GcAction>,

    /// Collect a store no daemon serves, directly on disk (PATH is the registry's
    /// rootdirectory, the directory holding `docker/`). Takes the store's lock.
    #[arg(long)]
    pub offline: bool,

    /// The regfs mount point (or, with --offline, the storage directory).
    #[arg(required = true)]
    pub path: Option<PathBuf>,

    /// Follow the run with a progress bar until it ends; exit non-zero if it failed.
    #[arg(long, conflicts_with = "offline")]
    pub wait: bool,

    /// The daemon's state directory, if not the default for the mount point. With
    /// --offline: the state directory of the daemon that serves the store when it is
    /// mounted; its pull times are what the retention policies judge by, and the tags it
    /// pruned within their grace keep their manifests (needed to prune with --config).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// With --offline: the configuration file whose `[retention]` applies. Tags are
    /// pruned first, by the same rules as the daemon's runs (a dry run unless
    /// `[retention] dry_run = false`; --dry-run makes it one).
    #[arg(
        long,
        value_name = "FILE",
        requires = "offline",
        help_heading = "Collection (--offline; a daemon uses its own settings)"
    )]
    pub config: Option<PathBuf>,

    /// Compute and report the plan; delete nothing.
    #[arg(
        long,
        requires = "offline",
        help_heading = "Collection (--offline; a daemon uses its own settings)"
    )]
    pub dry_run: bool,

    /// Roots are tagged manifests only: untagged manifests are removed, except index
    /// children and referrers (signatures, SBOMs) of what is kept.
    #[arg(
        long,
        requires = "offline",
        help_heading = "Collection (--offline; a daemon uses its own settings)"
    )]
    pub delete_untagged: bool,

    /// Uploads (and leftover *.tmp files) older than this are abandoned and removed.
    #[arg(long, default_value = "168h", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Collection (--offline; a daemon uses its own settings)")]
    pub upload_max_age: Duration,

    /// Unreferenced blobs written less than this long ago stay (their manifest may not be
    /// pushed yet); 0s turns it off.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Collection (--offline; a daemon uses its own settings)")]
    pub min_age: Duration,

    /// Keep every blob a manifest of unknown kind names (any `sha256:` digest in it) and
    /// collect the rest of its repository, instead of keeping that repository whole.
    #[arg(
        long,
        requires = "offline",
        help_heading = "Collection (--offline; a daemon uses its own settings)"
    )]
    pub keep_unknown: bool,

    /// Go on past a manifest whose blob is missing, keeping every blob its repository
    /// links and every revision, instead of stopping the run.
    #[arg(
        long,
        requires = "offline",
        help_heading = "Collection (--offline; a daemon uses its own settings)"
    )]
    pub allow_missing_manifests: bool,

    /// Look for leftover *.tmp files beside every link, not only beside links that are
    /// missing or damaged: lists every link directory (on a large store most of a run's
    /// system calls). Registry 3.1+ leaves one when it dies while writing a link.
    #[arg(
        long,
        requires = "offline",
        help_heading = "Collection (--offline; a daemon uses its own settings)"
    )]
    pub temp_files_everywhere: bool,

    /// Print the report as JSON on standard output.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// With --json: include every path deleted (or, with --dry-run, to be deleted).
    #[arg(long, requires = "json", help_heading = "Output")]
    pub list: bool,
}

#[derive(Debug, Subcommand)]
pub enum GcAction {
    /// Stop the running GC safely (within a second) and reopen the store for writes.
    Stop {
        /// The regfs mount point.
        mountpoint: PathBuf,
        /// The daemon's state directory, if not the default for MOUNTPOINT.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

impl GcArgs {
    pub fn options(&self) -> regfs::gc::Options {
        regfs::gc::Options {
            delete_untagged: self.delete_untagged,
            dry_run: self.dry_run,
            upload_max_age: self.upload_max_age,
            keep_unknown: self.keep_unknown,
            allow_missing_manifests: self.allow_missing_manifests,
            min_age: self.min_age,
            // No registry serves the store: nothing to give way to.
            threads: regfs::gc::ThreadShare::Full,
            keep_revisions: Vec::new(),
            temp_files: if self.temp_files_everywhere {
                regfs::gc::TempFileSearch::EveryLinkDir
            } else {
                regfs::gc::TempFileSearch::BrokenLinksOnly
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// The registry's real storage directory (its filesystem driver's rootdirectory).
    pub storage: Option<PathBuf>,

    /// Where to mount it; point the registry here. May be STORAGE itself.
    pub mountpoint: Option<PathBuf>,

    /// A TOML configuration file with any of these options; flags override it, and
    /// SIGHUP re-reads it (GC settings). Check one with `regfs config check FILE`.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// FUSE request threads [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256), help_heading = "Performance")]
    pub threads: Option<u16>,

    /// Seconds the kernel may cache entries, attributes and listings [default: 60].
    /// Every change goes through the mount, so long is safe unless something else
    /// writes STORAGE directly. In cluster mode it applies only to what other nodes
    /// cannot make wrong (links, uploads, blob names and absent names are never kept).
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Performance")]
    pub attr_timeout: Option<f64>,

    /// Do not ask the kernel for read passthrough (reads then go through the daemon).
    #[arg(long, help_heading = "Performance")]
    pub no_passthrough: bool,

    /// Inodes remembered before regfs asks the kernel to drop cached entries [default:
    /// a million, or on a filesystem without file handles, where each holds a
    /// descriptor, three quarters of the open-file limit].
    #[arg(long, value_name = "N", help_heading = "Performance")]
    pub max_inodes: Option<usize>,

    /// Seconds a GC epoch waits for in-place writers (link files, manifests) to finish
    /// before it refuses their writes too [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Write gate")]
    pub drain_timeout: Option<f64>,

    /// Also serve this user (a name or a numeric uid; repeatable). By default only root
    /// and the owner of STORAGE may use the mount; other users' requests get EACCES.
    #[arg(long, value_name = "NAME|UID", help_heading = "Access")]
    pub allow_user: Vec<String>,

    /// Serve every local user (the kernel's permission checks still apply).
    #[arg(long, help_heading = "Access")]
    pub allow_all_users: bool,

    /// Do not note when each tag is pushed and pulled (retention rules on pulls are then
    /// refused, and `regfs tags` shows only what was noted before).
    #[arg(long, help_heading = "Retention")]
    pub no_access_times: bool,

    /// When GC runs, in UTC: a crontab line (`0 3 * * SAT`), the 6/7-field form with
    /// seconds first, or @hourly/@daily/@weekly/@monthly.
    #[arg(long, value_name = "CRON", help_heading = "Garbage collection")]
    pub gc_schedule: Option<String>,

    /// How long a run may keep the store read-only: until-done, a limit such as 30m,
    /// or never (no run starts, triggers are refused) [default: until-done].
    #[arg(
        long,
        value_name = "until-done|<N>m|never",
        help_heading = "Garbage collection"
    )]
    pub gc_duration: Option<String>,

    /// Roots are tagged manifests only (index children and referrers of what is kept
    /// survive).
    #[arg(long, help_heading = "Garbage collection")]
    pub delete_untagged: bool,

    /// Runs compute and report what they would delete, and delete nothing.
    #[arg(long, help_heading = "Garbage collection")]
    pub dry_run: bool,

    /// How a run collects: read-only (pushes refused for the run) or online (pushes go
    /// on; writes pause for a moment) [default: read-only].
    #[arg(long, value_name = "MODE", help_heading = "Garbage collection")]
    pub gc_mode: Option<String>,

    /// Uploads (and leftover *.tmp files) older than this are removed by a run [default: 168h].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Garbage collection")]
    pub upload_max_age: Option<Duration>,

    /// Unreferenced blobs written less than this long ago stay (their manifest may not be
    /// pushed yet); 0s turns it off [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Garbage collection")]
    pub gc_min_age: Option<Duration>,

    /// The daemon's runs list every link directory for leftover *.tmp files on the first
    /// run and then at most this often; other runs look only where a link is missing or
    /// damaged. 0s: every run [default: 24h].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Garbage collection")]
    pub gc_temp_files_everywhere_every: Option<Duration>,

    /// Keep every blob a manifest of unknown kind names and collect the rest of its
    /// repository, instead of keeping that repository whole.
    #[arg(long, help_heading = "Garbage collection")]
    pub keep_unknown: bool,

    /// Go on past a manifest whose blob is missing (keeping every blob and revision of
    /// its repository) instead of failing the run.
    #[arg(long, help_heading = "Garbage collection")]
    pub allow_missing_manifests: bool,

    /// Status, job history and the control socket [default: /run/regfs/<escaped MOUNTPOINT>].
    #[arg(long, value_name = "DIR", help_heading = "Garbage collection")]
    pub state_dir: Option<PathBuf>,

    /// Serve the GC page at http://ADDR/, its API under /api/v1/ and Prometheus metrics
    /// at /metrics (a loopback address unless --http-allow-remote).
    #[arg(
        long = "http-listen",
        visible_alias = "metrics-listen",
        value_name = "ADDR",
        help_heading = "HTTP: page, API, metrics"
    )]
    pub metrics_listen: Option<String>,

    /// Allow --http-listen on an address other machines can reach.
    #[arg(
        long = "http-allow-remote",
        visible_alias = "metrics-allow-remote",
        help_heading = "HTTP: page, API, metrics"
    )]
    pub metrics_allow_remote: bool,

    /// Users who may change GC settings and start or stop runs through the API: an
    /// htpasswd file with bcrypt entries (the registry's own, e.g.
    /// /etc/docker/registry/htpasswd).
    #[arg(long, value_name = "FILE", help_heading = "HTTP: page, API, metrics")]
    pub api_htpasswd: Option<PathBuf>,

    /// A file holding a bearer token (first line, 16+ characters, mode 0600) that may
    /// change settings and start or stop runs through the API.
    #[arg(long, value_name = "FILE", help_heading = "HTTP: page, API, metrics")]
    pub api_token_file: Option<PathBuf>,

    /// Serve HTTPS with this PEM certificate chain (with --api-tls-key).
    #[arg(long, value_name = "FILE", help_heading = "HTTP: page, API, metrics")]
    pub api_tls_cert: Option<PathBuf>,

    /// The PEM private key of --api-tls-cert.
    #[arg(long, value_name = "FILE", help_heading = "HTTP: page, API, metrics")]
    pub api_tls_key: Option<PathBuf>,

    /// Accept credentials over plain HTTP on a non-loopback address (a TLS proxy in
    /// front, say).
    #[arg(long, help_heading = "HTTP: page, API, metrics")]
    pub api_allow_insecure: bool,

    /// The registry's configuration (e.g. /etc/docker/registry/config.yml): regfs checks
    /// its blob-descriptor cache and clears a redis cache of what GC deletes.
    #[arg(long, value_name = "FILE", help_heading = "Registry")]
    pub registry_config: Option<PathBuf>,

    /// Let GC delete even when the registry's cache is one regfs cannot make safe.
    #[arg(long, help_heading = "Registry")]
    pub allow_unsafe_cache: bool,

    /// Cluster mode: etcd's client URLs (http://HOST:PORT, comma-separated). Every node
    /// serving the same store shares one GC epoch; without this no etcd is needed.
    #[arg(long, value_name = "URL[,URL...]", help_heading = "Cluster")]
    pub cluster_endpoints: Option<String>,

    /// This node's name in the cluster, claimed in etcd at start (a name another live
    /// node holds is refused) [default: MACHINE-ID:MOUNTPOINT, from /etc/machine-id].
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub cluster_node: Option<String>,

    /// How long a node's membership outlives its last word to etcd (whole seconds, at
    /// least 2s) [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Cluster")]
    pub cluster_lease_ttl: Option<Duration>,

    /// The etcd key prefix of this cluster [default: /regfs/].
    #[arg(long, value_name = "PREFIX", help_heading = "Cluster")]
    pub cluster_prefix: Option<String>,

    /// The CA (PEM) etcd's server certificate chains to; needed by https:// endpoints.
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub cluster_ca_file: Option<PathBuf>,

    /// This node's client certificate (PEM), for an etcd run with --client-cert-auth.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Cluster",
        requires = "cluster_key_file"
    )]
    pub cluster_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM; mode 0600, owned by root).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Cluster",
        requires = "cluster_cert_file"
    )]
    pub cluster_key_file: Option<PathBuf>,

    /// etcd user (etcd's user/password authentication).
    #[arg(long, value_name = "USER", help_heading = "Cluster")]
    pub cluster_username: Option<String>,

    /// A file whose first line is the etcd user's password (mode 0600, owned by root):
    /// never the password itself on the command line.
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub cluster_password_file: Option<PathBuf>,
}

impl MountArgs {
    /// The GC settings among these flags; a switch not given is no value at all (the
    /// file's or the API's stands), a duration is passed on as it was checked.
    fn gc_values(&self) -> regfs::settings::layers::GcValues {
        let duration = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
        let switch = |on: bool| on.then_some(true);
        regfs::settings::layers::GcValues {
            mode: self.gc_mode.clone(),
            schedule: self.gc_schedule.clone(),
            duration: self.gc_duration.clone(),
            delete_untagged: switch(self.delete_untagged),
            dry_run: switch(self.dry_run),
            upload_max_age: duration(self.upload_max_age),
            min_age: duration(self.gc_min_age),
            temp_files_everywhere_every: duration(self.gc_temp_files_everywhere_every),
            keep_unknown: switch(self.keep_unknown),
            allow_missing_manifests: switch(self.allow_missing_manifests),
        }
    }

    /// The library's view of these flags (it never sees clap): each flag given as the
    /// key of the configuration file it stands for, a switch not given as no value.
    pub fn flags(&self) -> MountFlags {
        use regfs::config::{ClusterSection, FileConfig, MetricsSection, RegistrySection, UserRef};
        let switch = |on: bool| on.then_some(true);
        MountFlags {
            config: self.config.clone(),
            keys: FileConfig {
                storage: self.storage.clone(),
                mountpoint: self.mountpoint.clone(),
                state_dir: self.state_dir.clone(),
                threads: self.threads,
                attr_timeout: self.attr_timeout,
                passthrough: self.no_passthrough.then_some(false),
                max_inodes: self.max_inodes,
                drain_timeout: self.drain_timeout,
                allow_users: (!self.allow_user.is_empty())
                    .then(|| self.allow_user.iter().cloned().map(UserRef::Name).collect()),
                allow_all_users: switch(self.allow_all_users),
                access_times: self.no_access_times.then_some(false),
                gc: self.gc_values(),
                metrics: MetricsSection {
                    listen: self.metrics_listen.clone(),
                    allow_remote: switch(self.metrics_allow_remote),
                },
                registry: RegistrySection {
                    config: self.registry_config.clone(),
                    allow_unsafe_cache: switch(self.allow_unsafe_cache),
                },
                api: regfs::api::config::ApiSection {
                    htpasswd: self.api_htpasswd.clone(),
                    token_file: self.api_token_file.clone(),
                    tls_cert: self.api_tls_cert.clone(),
                    tls_key: self.api_tls_key.clone(),
                    allow_insecure: switch(self.api_allow_insecure),
                },
                cluster: ClusterSection {
                    endpoints: self
                        .cluster_endpoints
                        .as_ref()
                        .map(|e| e.split(',').map(|s| s.trim().to_string()).collect()),
                    node: self.cluster_node.clone(),
                    lease_ttl: self
                        .cluster_lease_ttl
                        .map(|d| humantime::format_duration(d).to_string()),
                    prefix: self.cluster_prefix.clone(),
                    ca_file: self.cluster_ca_file.clone(),
                    cert_file: self.cluster_cert_file.clone(),
                    key_file: self.cluster_key_file.clone(),
                    username: self.cluster_username.clone(),
                    password_file: self.cluster_password_file.clone(),
                },
                ..FileConfig::default()
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    /// A regfs mount point (its daemon answers), or a storage directory no daemon
    /// serves (read on disk; pull times from --state-dir, if given).
    pub path: PathBuf,
    /// Only this repository.
    #[arg(long, value_name = "REPOSITORY")]
    pub repo: Option<String>,
    /// Print JSON (one array).
    #[arg(long)]
    pub json: bool,
    /// The daemon's state directory, if not the default for the mount point.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RetentionAction {
    /// Each tag the policies would prune now, with the rule that lets it go, and each
    /// tag kept and why.
    Preview {
        /// A regfs mount point (its daemon's policies), or a storage directory no daemon
        /// serves (with --config).
        path: PathBuf,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
        /// The daemon's state directory, if not the default for the mount point.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// On a storage directory: the configuration file whose `[retention]` applies.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Put back a tag pruned within the grace ([retention] grace), on the manifest it
    /// named.
    Restore {
        /// The regfs mount point.
        mountpoint: PathBuf,
        /// The pruned tag.
        #[arg(value_name = "REPOSITORY:TAG")]
        reference: String,
        /// The daemon's state directory, if not the default for MOUNTPOINT.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a configuration file: exit 0 if `regfs mount --config FILE` would accept it.
    Check { file: PathBuf },
}
