//! Command line: clap derive, one subcommand per job.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::mount::MountConfig;

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
    Mount(MountArgs),
    /// Collect garbage: mark every blob a manifest references, sweep the rest.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Collect a store no daemon serves, directly on disk (STORAGE is the registry's
    /// rootdirectory, the directory holding `docker/`). Takes the store's lock.
    #[arg(long)]
    pub offline: bool,

    /// The storage directory (with --offline).
    pub path: PathBuf,

    /// Compute and report the plan; delete nothing.
    #[arg(long, help_heading = "Collection")]
    pub dry_run: bool,

    /// Roots are tagged manifests only: untagged manifests are removed, except index
    /// children and referrers (signatures, SBOMs) of what is kept.
    #[arg(long, help_heading = "Collection")]
    pub delete_untagged: bool,

    /// Uploads (and leftover *.tmp files) older than this are abandoned and removed.
    #[arg(long, default_value = "168h", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Collection")]
    pub upload_max_age: Duration,

    /// Keep every blob a manifest of unknown kind names (any `sha256:` digest in it)
    /// instead of stopping the run.
    #[arg(long, help_heading = "Collection")]
    pub keep_unknown: bool,

    /// Print the report as JSON on standard output.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// With --json: include every path deleted (or, with --dry-run, to be deleted).
    #[arg(long, requires = "json", help_heading = "Output")]
    pub list: bool,
}

impl GcArgs {
    pub fn options(&self) -> crate::gc::Options {
        crate::gc::Options {
            delete_untagged: self.delete_untagged,
            dry_run: self.dry_run,
            upload_max_age: self.upload_max_age,
            keep_unknown: self.keep_unknown,
        }
    }
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The registry's real storage directory (its filesystem driver's rootdirectory).
    pub storage: PathBuf,

    /// Where to mount it; point the registry here. May be STORAGE itself.
    pub mountpoint: PathBuf,

    /// FUSE request threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), help_heading = "Performance")]
    pub threads: u16,

    /// Seconds the kernel may cache entries and attributes. Every change goes through the
    /// mount, so long is safe unless something else writes STORAGE directly.
    #[arg(
        long,
        default_value_t = 60.0,
        value_name = "SECONDS",
        help_heading = "Performance"
    )]
    pub attr_timeout: f64,

    /// Inodes held (one open handle each) before regfs asks the kernel to drop cached
    /// entries; 0 = three quarters of the open-file limit.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        help_heading = "Performance"
    )]
    pub max_inodes: usize,

    /// Do not ask the kernel for read passthrough (reads then go through the daemon).
    #[arg(long, help_heading = "Performance")]
    pub no_passthrough: bool,

    /// Seconds a GC epoch waits for in-place writers (link files, manifests) to finish
    /// before it refuses their writes too.
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        help_heading = "Write gate"
    )]
    pub drain_timeout: f64,
}

impl MountArgs {
    pub fn mount_config(&self) -> Result<MountConfig, String> {
        let attr_timeout = Duration::try_from_secs_f64(self.attr_timeout).map_err(|_| {
            format!(
                "--attr-timeout {}: not a number of seconds",
                self.attr_timeout
            )
        })?;
        Ok(MountConfig {
            storage: self.storage.clone(),
            mountpoint: self.mountpoint.clone(),
            threads: self.threads as usize,
            attr_timeout,
            passthrough: !self.no_passthrough,
            max_inodes: self.max_inodes,
        })
    }

    pub fn drain_timeout(&self) -> Result<Duration, String> {
        Duration::try_from_secs_f64(self.drain_timeout).map_err(|_| {
            format!(
                "--drain-timeout {}: not a number of seconds",
                self.drain_timeout
            )
        })
    }
}
