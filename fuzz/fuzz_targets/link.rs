//! Link files (`_layers/.../link`, revision and tag links): parsed strictly, and what
//! parses prints back byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs::layout::parse_link;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = parse_link(data) {
        assert_eq!(d.to_string().as_bytes(), data);
        assert_eq!(d.hex().len(), 64);
    }
});
