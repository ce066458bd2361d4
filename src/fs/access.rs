//! Who may use the mount. The mount is shared (`allow_other`, so the registry's own user
//! reaches it), which would let any local user open files through the daemon and spend
//! its descriptors. By default only root and the owner of the storage directory (the
//! registry's user: Debian's `docker-registry`) are served; every request of another uid
//! that reaches the daemon is refused with EACCES. Options widen it.

use std::collections::HashSet;
use std::ffi::CString;
use std::sync::Mutex;

use crate::error::FsError;

/// Who may use the mount besides root and the storage directory's owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountUsers {
    /// Every local user (the kernel's permission checks still apply).
    pub all: bool,
    /// These uids too.
    pub uids: Vec<u32>,
}

/// The uids served, resolved when the mount starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callers {
    all: bool,
    /// Sorted, root and the storage owner included.
    uids: Vec<u32>,
    owner: u32,
}

impl Callers {
    /// `owner`: the storage directory's owner, read once when the mount starts.
    pub fn new(users: &MountUsers, owner: u32) -> Callers {
        let mut uids = users.uids.clone();
        uids.extend([0, owner]);
        uids.sort_unstable();
        uids.dedup();
        Callers {
            all: users.all,
            uids,
            owner,
        }
    }

    /// Every uid (no restriction).
    pub fn everyone() -> Callers {
        Callers::new(
            &MountUsers {
                all: true,
                uids: Vec::new(),
            },
            0,
        )
    }

    /// Whether requests of `uid` are served. A few compares on every request.
    pub fn admits(&self, uid: u32) -> bool {
        self.all || self.uids.contains(&uid)
    }

    /// For the log line at start.
    pub fn describe(&self) -> String {
        if self.all {
            return "every local user (--allow-all-users)".into();
        }
        let others: Vec<String> = self
            .uids
            .iter()
            .filter(|&&u| u != 0 && u != self.owner)
            .map(|u| format!("uid {u}"))
            .collect();
        let mut out = format!(
            "root and uid {} (owner of the storage directory)",
            self.owner
        );
        if !others.is_empty() {
            out.push_str(&format!(", and {}", others.join(", ")));
        }
        out
    }
}

/// Operations on an open handle: served to whoever holds it, since an allowed caller
/// opened it (and the kernel sends some of them, release among them, without the
/// caller's credentials).
const ON_OPEN_HANDLE: [&str; 9] = [
    "read",
    "write",
    "flush",
    "fsync",
    "release",
    "readdir",
    "readdirplus",
    "fsyncdir",
    "releasedir",
];

/// The check the FUSE adapter makes on every request.
#[derive(Debug)]
pub struct MountAccess {
    callers: Callers,
    warned: Mutex<HashSet<u32>>,
}

impl MountAccess {
    pub fn new(callers: Callers) -> MountAccess {
        MountAccess {
            callers,
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Whether operation `op` of `uid` is served.
    pub fn check(&self, op: &str, uid: u32) -> Result<(), FsError> {
        if self.callers.admits(uid) || ON_OPEN_HANDLE.contains(&op) {
            return Ok(());
        }
        self.warn_once(uid);
        Err(FsError::NotAllowed { uid })
    }

    /// One warning per refused uid (a bounded number of them), so an operator whose
    /// registry runs as another user than the storage owner sees why; the rest are
    /// counted in the metrics (errno 13) and logged at debug.
    fn warn_once(&self, uid: u32) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < 64 && warned.insert(uid) {
            tracing::warn!(
                uid,
                "refused a request of a user this mount does not serve (root and the storage owner only by default; see --allow-user)"
            );
        }
    }
}

/// A user as an operator names it: a user name from the system's user database, or a
/// numeric uid (which need not have an entry).
pub fn resolve_user(spec: &str) -> Result<u32, String> {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        return spec
            .parse::<u32>()
            .map_err(|_| format!("{spec:?} is not a uid"));
    }
    let name = CString::new(spec).map_err(|_| format!("{spec:?} is not a user name"))?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes strings into `buf`
    // and sets `found` to `&mut pw` or null. Only pw_uid is read, before `buf` goes.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(format!(
            "looking up user {spec:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if found.is_null() {
        return Err(format!(
            "no user named {spec:?} on this system (give a name or a numeric uid)"
        ));
    }
    Ok(pw.pw_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_owner_are_served_by_default_and_options_widen_it() {
        let c = Callers::new(&MountUsers::default(), 998);
        assert!(c.admits(0) && c.admits(998));
        assert!(!c.admits(65534) && !c.admits(1000));
        let c = Callers::new(
            &MountUsers {
                all: false,
                uids: vec![1000],
            },
            998,
        );
        assert!(c.admits(1000) && !c.admits(65534));
        assert!(c.describe().contains("uid 1000"), "{}", c.describe());
        assert!(Callers::everyone().admits(65534));
    }

    #[test]
    fn users_are_named_by_name_or_uid() {
        assert_eq!(resolve_user("root"), Ok(0));
        assert_eq!(resolve_user("4242"), Ok(4242));
        let e = resolve_user("no-such-user-regfs").unwrap_err();
        assert!(e.contains("no-such-user-regfs"), "{e}");
        assert!(resolve_user("99999999999").is_err());
        assert!(resolve_user("").is_err());
    }
}
