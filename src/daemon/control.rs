//! The control socket: `regfs gc`, `regfs gc stop` and `regfs status` talk to the daemon
//! over a Unix socket in the state directory, one JSON request and one JSON answer per
//! connection. Only root can connect: the socket is 0600 inside the 0700 state directory,
//! and it appears under its name only once it has that mode.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use serde::{Deserialize, Serialize};

use super::job::{Job, Trigger};
use super::service::Daemon;
use super::status::Status;
use crate::state_dir::{FILE_MODE, StateDir};
use crate::worker::Worker;

pub const SOCKET: &str = "control.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Gc,
    Stop,
    Status,
    Job {
        id: u64,
    },
    /// Every tag with its times (`regfs tags`).
    Tags {
        #[serde(default)]
        repo: Option<String>,
    },
    /// What the retention policies would prune now (`regfs retention preview`).
    RetentionPreview,
    /// Puts a pruned tag back within its grace (`regfs retention restore`).
    RetentionRestore {
        repo: String,
        tag: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<Job>>,
    /// The answer to `tags` and `retention_preview`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// An answer carrying `data`, or the error.
fn with_data<T: Serialize>(r: Result<T, String>) -> Response {
    match r.and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string())) {
        Ok(v) => Response {
            ok: true,
            data: Some(v),
            ..Response::default()
        },
        Err(e) => Response {
            error: Some(e),
            ..Response::default()
        },
    }
}

fn answer(daemon: &Arc<Daemon>, req: Request) -> Response {
    match req {
        Request::Gc => match daemon.trigger(Trigger::Cli) {
            Ok(id) => Response {
                ok: true,
                job_id: Some(id),
                ..Response::default()
            },
            Err(e) => Response {
                error: Some(e.to_string()),
                job_id: match e {
                    super::TriggerError::Busy(id) => Some(id),
                    _ => None,
                },
                ..Response::default()
            },
        },
        Request::Stop => match daemon.stop() {
            Some(id) => Response {
                ok: true,
                job_id: Some(id),
                ..Response::default()
            },
            // Not collecting here: the cluster's run, if one is on, is stopped.
            None => match daemon.coordinator().stop_cluster_run() {
                Ok(Some(epoch)) => Response {
                    ok: true,
                    data: Some(serde_json::json!({
                        "message": format!("asked the cluster's collector to stop its run (epoch {epoch})"),
                        "epoch": epoch,
                    })),
                    ..Response::default()
                },
                Ok(None) => Response {
                    error: Some("no GC run is active".into()),
                    ..Response::default()
                },
                Err(e) => Response {
                    error: Some(format!(
                        "no GC run here, and the cluster's cannot be stopped: {e}"
                    )),
                    ..Response::default()
                },
            },
        },
        Request::Status => Response {
            ok: true,
            status: Some(Box::new(daemon.status())),
            ..Response::default()
        },
        Request::Job { id } => match daemon.job(id) {
            Some(j) => Response {
                ok: true,
                job: Some(Box::new(j)),
                ..Response::default()
            },
            None => Response {
                error: Some(format!("no job {id}")),
                ..Response::default()
            },
        },
        Request::Tags { repo } => with_data(daemon.tags(repo.as_deref())),
        Request::RetentionPreview => with_data(daemon.retention_preview()),
        Request::RetentionRestore { repo, tag } => with_data(daemon.retention_restore(&repo, &tag)),
    }
}

/// A request is one short JSON line; a longer one is refused, not buffered.
pub const MAX_REQUEST_SIZE: usize = 4096;

/// Parses one request line as received (with or without its newline): the control
/// protocol's whole grammar, kept apart from the socket so it can be fuzzed.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_SIZE {
        return Err(format!("bad request: longer than {MAX_REQUEST_SIZE} bytes"));
    }
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

fn serve_one(daemon: &Arc<Daemon>, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = Vec::new();
    // One byte over the limit is enough to refuse it.
    BufReader::new(&stream)
        .take(MAX_REQUEST_SIZE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    let resp = match parse_request(&line) {
        Ok(req) => answer(daemon, req),
        Err(e) => Response {
            error: Some(e),
            ..Response::default()
        },
    };
    let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

/// The name the socket is bound under before it has its mode.
const SOCKET_UNREADY: &str = "control.sock.new";

/// Binds the socket in the state directory: under a temporary name (through the
/// directory's descriptor, so the directory's path cannot be swapped meanwhile), set to
/// 0600, then renamed into place. The process umask is 0 (the mount needs that), and
/// changing it around bind would race with FUSE requests creating files, so the mode is
/// set before the socket is reachable under its name; the 0700 directory keeps everyone
/// but root out even of the temporary name.
fn bind(dir: &StateDir) -> io::Result<UnixListener> {
    dir.remove(SOCKET_UNREADY)?;
    let listener = UnixListener::bind(dir.fd_path(SOCKET_UNREADY))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.shown(SOCKET_UNREADY))))?;
    dir.chmod(SOCKET_UNREADY, FILE_MODE)?;
    dir.rename(SOCKET_UNREADY, SOCKET)?;
    Ok(listener)
}

/// How often the listener looks whether it is asked to stop.
const POLL: Duration = Duration::from_millis(100);

/// The control socket being served; [`ControlSocket::close`] ends it.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    dir: Arc<StateDir>,
    worker: Worker,
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops listening (a request being answered is finished first) and removes the
    /// socket, so no client waits on a daemon that is going away.
    pub fn close(self) {
        self.worker.stop();
        if let Err(e) = self.dir.remove(SOCKET) {
            tracing::warn!(error = %e, "cannot remove the control socket");
        }
    }
}

/// Requests answered at once, each on a thread of its own: a `gc` waiting on etcd to
/// claim its epoch does not hold up `status`.
const MAX_IN_FLIGHT: usize = 8;

/// Listens on `<state_dir>/control.sock` in a background thread; each request is answered
/// on a thread of its own (at most [`MAX_IN_FLIGHT`]), joined by the listener.
pub fn spawn(daemon: Arc<Daemon>) -> io::Result<ControlSocket> {
    let dir = daemon.state_dir().clone();
    let path = dir.path().join(SOCKET);
    let listener = bind(&dir)?;
    listener.set_nonblocking(true)?;
    let worker = Worker::spawn("regfs-control", move |stop| {
        let mut answering: Vec<std::thread::JoinHandle<()>> = Vec::new();
        while !stop.is_set() {
            join_finished(&mut answering);
            let mut fds = [PollFd::new(&listener, PollFlags::IN)];
            let timeout = Timespec::try_from(POLL).expect("a short timeout");
            if matches!(poll(&mut fds, Some(&timeout)), Ok(0) | Err(_)) {
                continue;
            }
            match listener.accept() {
                Ok((s, _)) if answering.len() >= MAX_IN_FLIGHT => {
                    let busy = Response {
                        error: Some(format!(
                            "the daemon is answering {MAX_IN_FLIGHT} requests; try again"
                        )),
                        ..Response::default()
                    };
                    let mut out = serde_json::to_vec(&busy).unwrap_or_default();
                    out.push(b'\n');
                    let _ = s
                        .set_nonblocking(false)
                        .and_then(|()| s.set_write_timeout(Some(POLL)))
                        .and_then(|()| (&s).write_all(&out));
                }
                Ok((s, _)) => {
                    let daemon = daemon.clone();
                    let spawned = std::thread::Builder::new()
                        .name("regfs-control-req".into())
                        .spawn(move || {
                            let served = s
                                .set_nonblocking(false)
                                .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
                                .and_then(|()| serve_one(&daemon, s));
                            if let Err(e) = served {
                                tracing::debug!(error = %e, "control request failed");
                            }
                        });
                    match spawned {
                        Ok(t) => answering.push(t),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a thread to answer a control request")
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    stop.nap(POLL);
                }
            }
        }
        for t in answering {
            let _ = t.join();
        }
    })?;
    Ok(ControlSocket { path, dir, worker })
}

/// Joins the request threads that have ended.
fn join_finished(threads: &mut Vec<std::thread::JoinHandle<()>>) {
    let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.is_finished());
    *threads = running;
    for t in done {
        let _ = t.join();
    }
}

/// Sends one request to the daemon whose state directory is `state_dir`.
pub fn request(state_dir: &Path, req: &Request) -> Result<Response, String> {
    let path = state_dir.join(SOCKET);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the regfs daemon at {} ({e}); is `regfs mount` running for this mount point (or give --state-dir)?",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer from the daemon: {e}"))
}

/// The default state directory of a mount point: /run/regfs/<escaped path>, escaped as
/// systemd does (`/srv/registry` becomes `srv-registry`).
pub fn default_state_dir(mountpoint: &Path) -> PathBuf {
    // A mount point whose daemon died cannot be resolved (ENOTCONN): its parent can.
    let canonical = std::fs::canonicalize(mountpoint)
        .or_else(|e| match (mountpoint.parent(), mountpoint.file_name()) {
            (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
            _ => Err(e),
        })
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let s = canonical.to_string_lossy();
    let trimmed = s.trim_matches('/');
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            other => out.push_str(&format!("\\x{other:02x}")),
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    PathBuf::from("/run/regfs").join(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_errors() {
        assert!(matches!(
            parse_request(b"{\"cmd\":\"job\",\"id\":7}\n"),
            Ok(Request::Job { id: 7 })
        ));
        assert!(matches!(
            parse_request(b"{\"cmd\":\"gc\"}"),
            Ok(Request::Gc)
        ));
        for bad in [&b""[..], b"{", b"{\"cmd\":\"rm\"}", b"\xff"] {
            assert!(parse_request(bad).unwrap_err().starts_with("bad request"));
        }
        let long = format!("{{\"cmd\":\"gc\"{}}}", " ".repeat(MAX_REQUEST_SIZE));
        assert!(
            parse_request(long.as_bytes())
                .unwrap_err()
                .contains("longer")
        );
    }

    #[test]
    fn state_directories_are_named_like_systemd_units() {
        assert_eq!(
            default_state_dir(Path::new("/nonexistent/srv/registry")),
            PathBuf::from("/run/regfs/nonexistent-srv-registry")
        );
        assert_eq!(
            default_state_dir(Path::new("/nonexistent/my-reg")),
            PathBuf::from("/run/regfs/nonexistent-my\\x2dreg")
        );
    }
}
