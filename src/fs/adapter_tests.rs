use super::*;
use crate::fs::caching::Caching;
use crate::policy::AdmitAll;
use fuser::FileType;

#[test]
fn a_panic_in_the_core_answers_eio_for_that_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(StorageFs::new(dir.path(), Arc::new(AdmitAll)).unwrap());
    let adapter = FuseAdapter::new(
        fs,
        Caching::new(Duration::from_secs(1), false),
        false,
        Callers::everyone(),
    );
    let r: Result<(), Errno> = adapter.call_as("test", 0, 1, || panic!("bug in a handler"));
    assert_eq!(r.unwrap_err(), Errno::from_i32(libc::EIO));
    // The next request is served normally.
    let attr = adapter
        .call_as("getattr", 0, 1, || adapter.fs.getattr(1))
        .unwrap();
    assert_eq!(attr.kind, FileType::Directory);
}

#[test]
fn requests_of_users_the_mount_does_not_serve_answer_eacces() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(StorageFs::new(dir.path(), Arc::new(AdmitAll)).unwrap());
    let owner = 998;
    let callers = Callers::new(&crate::fs::access::MountUsers::default(), owner);
    let adapter = FuseAdapter::new(
        fs,
        Caching::new(Duration::from_secs(1), false),
        false,
        callers,
    );
    let getattr = |uid| adapter.call_as("getattr", uid, 1, || adapter.fs.getattr(1));
    assert_eq!(getattr(65534).unwrap_err(), Errno::from_i32(libc::EACCES));
    assert!(getattr(0).is_ok() && getattr(owner).is_ok());
    // A handle an allowed caller opened serves whoever holds it.
    let r = adapter.call_as("release", 65534, 1, || Ok(()));
    assert!(r.is_ok());
}
