//! Manifest bytes as the collector reads them: parsed under their own digest (so the
//! parser itself is reached), refused under any other, and every digest the fallback
//! scan reports really is in the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regfs::layout::Digest;
use regfs::manifest::{self, ManifestError};

fuzz_target!(|data: &[u8]| {
    let own = Digest::of(data);
    let parsed = manifest::parse(data, &own);
    if let Ok(m) = &parsed {
        // An image names blobs, an index names manifests.
        assert!(m.children.is_empty() || m.blobs.is_empty() || m.kind.is_index());
    }
    let other = Digest::of(b"not these bytes");
    if own != other && data.len() <= manifest::MAX_MANIFEST_SIZE {
        assert!(matches!(
            manifest::parse(data, &other),
            Err(ManifestError::DigestMismatch { .. })
        ));
    }
    for d in manifest::digests_mentioned(data) {
        let text = d.to_string();
        assert!(data.windows(text.len()).any(|w| w == text.as_bytes()));
    }
});
