//! The configuration file (TOML, then every value resolved as `regfs mount` would) and
//! the schedule parser: errors, never panics or hangs; a schedule that parses keeps the
//! text as written and fires.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use regfs::config::{FileConfig, MountFlags, resolve};
use regfs::settings::GcDuration;
use regfs::settings::schedule::Schedule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = FileConfig::parse(text, "fuzz.toml") {
        let _ = resolve(
            &MountFlags::with_config(Path::new("fuzz.toml")),
            &file,
            "fuzz.toml",
        );
    }
    // Schedules are one line; long inputs only slow the search down.
    if text.len() <= 256 {
        if let Ok(s) = text.parse::<Schedule>() {
            assert_eq!(s.to_string(), text);
            assert!(s.next_after(chrono::Utc::now()).is_some());
        }
        let _ = text.parse::<GcDuration>();
    }
});
