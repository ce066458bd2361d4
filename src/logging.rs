//! Logging: tracing with the filter from REGFS_LOG, or from -v.

use std::io::{self, IsTerminal, Write};

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
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Standard error for log lines, where a failed write is dropped: tracing-subscriber
/// reports a failed write with `eprintln!`, which panics when standard error is a closed
/// pipe or a full disk (a restarted journal, `2>/dev/full`), in whatever thread logged.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
