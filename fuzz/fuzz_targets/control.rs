//! The control socket's requests: any bytes give a request or an error, never a panic,
//! and a request that parses survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs::daemon::control::parse_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        let again = serde_json::to_vec(&req).unwrap();
        let back = parse_request(&again).expect("a request's own JSON parses");
        assert_eq!(serde_json::to_vec(&back).unwrap(), again);
    }
});
