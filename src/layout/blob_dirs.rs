//! The blob tree read through a handle on each fan-out directory (`blobs/sha256/<xx>`),
//! each opened once, on first use: a blob's `data` is then two components below a handle
//! instead of three (from the blobs root) or eight (from the store's root). A collector
//! reads every manifest and the size of every blob, and each path component is a dentry
//! lookup for the kernel.

use std::io;
use std::path::Path;
use std::sync::OnceLock;

use rustix::fs::Stat;

use super::Digest;
use super::paths;
use super::store::{ReadError, Store};

pub struct BlobDirs {
    /// The blobs root (`None`: the store had none when this was made).
    root: Option<Store>,
    /// By the fan-out byte; set when it was opened (a missing one is looked up again: it
    /// may be made later).
    fan_outs: Box<[OnceLock<Store>]>,
}

impl BlobDirs {
    /// The blob tree of `store`; `None` inside when the store has no blobs root.
    pub fn new(store: &Store) -> io::Result<Self> {
        Ok(BlobDirs {
            root: store.sub(&paths::blobs_root())?,
            fan_outs: (0..256).map(|_| OnceLock::new()).collect(),
        })
    }

    /// The fan-out directory `d` lies in; `None` when it does not exist.
    fn fan_out(&self, d: &Digest) -> io::Result<Option<&Store>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let cell = &self.fan_outs[usize::from(d.fan_out())];
        if let Some(s) = cell.get() {
            return Ok(Some(s));
        }
        let Some(opened) = root.sub(Path::new(&d.prefix()))? else {
            return Ok(None);
        };
        // Another thread may have opened it first: either handle will do.
        let _ = cell.set(opened);
        Ok(cell.get())
    }

    /// Reads blob `d`'s data whole (at most `limit` bytes); `None` if it does not exist.
    pub fn read_data(&self, d: &Digest, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
        match self.fan_out(d) {
            Ok(Some(dir)) => dir.read(&paths::blob_data_in_fan_out(d), limit),
            Ok(None) => Ok(None),
            Err(source) => Err(ReadError::Io {
                path: self.shown_data(d),
                source,
            }),
        }
    }

    /// Blob `d`'s data as named from the top store's root, for messages.
    fn shown_data(&self, d: &Digest) -> String {
        let rel = paths::blob_data_in_blobs_root(d);
        match &self.root {
            Some(root) => root.shown(&rel).display().to_string(),
            None => paths::blob_data(d).display().to_string(),
        }
    }

    /// Stats blob `d`'s data without following links; `None` if it does not exist.
    pub fn stat_data(&self, d: &Digest) -> io::Result<Option<Stat>> {
        match self.fan_out(d)? {
            Some(dir) => dir.stat(&paths::blob_data_in_fan_out(d)),
            None => Ok(None),
        }
    }

    /// Stats blob `d`'s directory without following links; `None` if it does not exist.
    pub fn stat_dir(&self, d: &Digest) -> io::Result<Option<Stat>> {
        match self.fan_out(d)? {
            Some(dir) => dir.stat(Path::new(&d.hex())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, d: &Digest, data: &[u8]) {
        let dir = root.join(paths::blob_dir(d));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(paths::DATA), data).unwrap();
    }

    /// A fan-out directory missing at a first look is looked for again: an online run
    /// reads manifests pushed during its mark, into fan-out directories made then.
    #[test]
    fn a_fan_out_directory_made_after_a_first_look_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Digest::of(b"manifest");
        std::fs::create_dir_all(tmp.path().join(paths::blobs_root())).unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let blobs = BlobDirs::new(&store).unwrap();
        assert!(blobs.read_data(&d, 100).unwrap().is_none());
        assert!(blobs.stat_data(&d).unwrap().is_none());
        put(tmp.path(), &d, b"manifest");
        assert_eq!(blobs.read_data(&d, 100).unwrap().unwrap(), b"manifest");
        assert_eq!(blobs.stat_data(&d).unwrap().unwrap().st_size, 8);
        assert!(blobs.stat_dir(&d).unwrap().is_some());
    }

    /// A fan-out directory that is a symbolic link is never followed: reading through it
    /// fails naming the blob's data from the store's root.
    #[test]
    fn a_fan_out_directory_that_is_a_link_is_refused_naming_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = Digest::of(b"manifest");
        put(outside.path(), &d, b"manifest");
        let fan_out = tmp.path().join(paths::blob_prefix_dir(&d.prefix()));
        std::fs::create_dir_all(fan_out.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join(paths::blob_prefix_dir(&d.prefix())),
            &fan_out,
        )
        .unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let blobs = BlobDirs::new(&store).unwrap();
        let err = blobs.read_data(&d, 100).unwrap_err().to_string();
        assert!(
            err.starts_with(&paths::blob_data(&d).display().to_string()),
            "{err}"
        );
        assert!(blobs.stat_data(&d).is_err());
    }
}
