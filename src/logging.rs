//! Logging: tracing with the filter from REGFS_LOG, or from -v.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub const ENV: &str = "REGFS_LOG";

pub fn init(verbose: u8) {
    // fuser logs an ERROR whenever the kernel rejects a reply to a request it had
    // already interrupted (Go programs such as the registry get such interrupts all the
    // time); the request itself was answered, so that line is noise.
    let default = match verbose {
        0 => "info,fuser::reply=off",
        1 => "regfs=debug,info,fuser::reply=off",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
