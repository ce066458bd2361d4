//! What commands print on standard output. `println!` panics (exit 101) when standard
//! output is a closed pipe (`regfs jobs | head -1`) or a full disk (`> /dev/full`);
//! here that is an error the command reports and exits non-zero on.
//!
//! A listing (`regfs jobs`, `regfs status`, a dry run's plan, a manual page) is
//! different: a reader that closes the pipe early had what it wanted, so
//! [`print_listing`] ends quietly with success there, as `ls | head` does. What a run
//! did is never a listing: its report into a closed pipe is still an error that says
//! what the run deleted.
//!
//! SIGPIPE stays ignored, as the Rust runtime sets it: a write to a closed pipe returns
//! EPIPE to whoever wrote, so a client that goes away from the control socket or the
//! metrics endpoint never kills the daemon, and the CLI reports the closed pipe like
//! any other output error.

use std::io::{self, Write};

/// Writes `text` whole to standard output and flushes it.
pub fn print(text: &str) -> Result<(), String> {
    write_all(text.as_bytes())
}

/// Writes a listing whole to standard output: a closed pipe is success (the reader
/// stopped reading, as after `| head -1`); any other failure (a full disk) is an error.
pub fn print_listing(text: &str) -> Result<(), String> {
    write_listing(text.as_bytes())
}

/// [`print_listing`] for bytes (a completion script, a manual page).
pub fn write_listing(bytes: &[u8]) -> Result<(), String> {
    match write_stdout(bytes) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(describe),
    }
}

/// [`print`] with a newline.
pub fn println(text: &str) -> Result<(), String> {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    print(&line)
}

/// Bytes (a completion script, a manual page) to standard output.
pub fn write_all(bytes: &[u8]) -> Result<(), String> {
    write_stdout(bytes).map_err(describe)
}

fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush())
}

fn describe(e: io::Error) -> String {
    format!("writing to standard output: {e}")
}

/// An error message on standard error; if even that fails there is nobody to tell.
pub fn error(message: &str) {
    let _ = writeln!(io::stderr().lock(), "regfs: error: {message}");
}
