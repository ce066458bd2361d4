//! The metrics endpoint's HTTP server: one thread multiplexing a bounded number of
//! connections with poll(2), one request per connection. Whoever can reach the port
//! cannot make the daemon spend threads or descriptors: at most [`MAX_CONNECTIONS`]
//! are open, each for at most [`CONNECTION_TIMEOUT`], and when all are taken the one
//! that has waited longest without sending a request is closed to make room, so a
//! scraper that sends its request at once is always answered.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::worker::Worker;

/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection's whole life: request in, answer out.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this is refused (a scrape's is a few hundred bytes).
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// What the server hands the handler.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without a query string.
    pub path: String,
}

/// The handler's answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

struct Conn {
    stream: TcpStream,
    opened: Instant,
    head: Vec<u8>,
    /// The answer and how much of it is written, once the request is in.
    out: Option<(Vec<u8>, usize)>,
}

impl Conn {
    fn waiting_for_request(&self) -> bool {
        self.out.is_none()
    }
}

/// The request line of a complete head; `None` while the head is incomplete.
fn parse(head: &[u8]) -> Option<Result<Request, ()>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).map_err(|_| ());
    Some(text.and_then(|t| {
        let line = t.lines().next().ok_or(())?;
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().ok_or(())?, parts.next().ok_or(())?);
        let path = target.split('?').next().unwrap_or(target);
        Ok(Request {
            method: method.to_string(),
            path: path.to_string(),
        })
    }))
}

/// Reads what the peer sent; `false` when the connection is done with.
fn read_request(c: &mut Conn, handler: &dyn Fn(&Request) -> Response) -> bool {
    let mut buf = [0u8; 2048];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => c.head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
        if c.head.len() > MAX_REQUEST_HEAD {
            break;
        }
    }
    let resp = match parse(&c.head) {
        None if c.head.len() > MAX_REQUEST_HEAD => Response::text(431, "request too large\n"),
        None => return true,
        Some(Err(())) => Response::text(400, "bad request\n"),
        Some(Ok(req)) => handler(&req),
    };
    c.out = Some((resp.encode(), 0));
    write_answer(c)
}

/// Writes what it can of the answer; `false` once it is all written (or cannot be).
fn write_answer(c: &mut Conn) -> bool {
    let Some((out, done)) = &mut c.out else {
        return true;
    };
    while *done < out.len() {
        match c.stream.write(&out[*done..]) {
            Ok(0) => return false,
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
    false
}

/// Accepts what is pending, making room by closing the connection that has waited
/// longest for its request.
fn accept(listener: &TcpListener, conns: &mut Vec<Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    let oldest = conns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.waiting_for_request())
                        .min_by_key(|(_, c)| c.opened)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    conns.swap_remove(oldest);
                }
                conns.push(Conn {
                    stream,
                    opened: Instant::now(),
                    head: Vec::new(),
                    out: None,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: let the backlog wait rather than spin.
                tracing::debug!(error = %e, "metrics: accept failed");
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

/// The longest wait for something to happen before the server looks whether to stop.
const ROUND: Duration = Duration::from_millis(200);

/// One round: wait for something to happen (at most [`ROUND`]), then serve it.
fn turn(listener: &TcpListener, conns: &mut Vec<Conn>, handler: &dyn Fn(&Request) -> Response) {
    let ready: Vec<PollFlags> = {
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(listener, PollFlags::IN));
        for c in conns.iter() {
            let want = if c.waiting_for_request() {
                PollFlags::IN
            } else {
                PollFlags::OUT
            };
            fds.push(PollFd::from_borrowed_fd(c.stream.as_fd(), want));
        }
        let timeout = Timespec::try_from(ROUND).expect("a short timeout");
        if poll(&mut fds, Some(&timeout)).is_err() {
            return;
        }
        fds.iter().map(|f| f.revents()).collect()
    };
    let mut keep = Vec::with_capacity(conns.len());
    for (c, flags) in conns.drain(..).zip(&ready[1..]) {
        let mut c = c;
        let alive = if flags.is_empty() {
            true
        } else if c.waiting_for_request() {
            read_request(&mut c, handler)
        } else {
            write_answer(&mut c)
        };
        if alive && c.opened.elapsed() < CONNECTION_TIMEOUT {
            keep.push(c);
        }
    }
    *conns = keep;
    if !ready[0].is_empty() {
        accept(listener, conns);
    }
}

/// The server running; [`Server::stop`] ends it.
#[derive(Debug)]
pub struct Server {
    pub bound: SocketAddr,
    worker: Worker,
}

impl Server {
    /// Stops serving (within one round, [`ROUND`]) and closes every connection.
    pub fn stop(self) {
        self.worker.stop();
    }
}

/// Listens on `addr` and serves requests with `handler` on one background thread.
pub fn serve(
    addr: SocketAddr,
    handler: impl Fn(&Request) -> Response + Send + 'static,
) -> io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let worker = Worker::spawn("regfs-metrics", move |stop| {
        let mut conns = Vec::new();
        while !stop.is_set() {
            turn(&listener, &mut conns, &handler);
        }
    })?;
    Ok(Server { bound, worker })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_once_the_head_is_complete() {
        assert!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").is_none());
        let r = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
        assert!(parse(b"\xff\xfe\r\n\r\n").unwrap().is_err());
        assert!(parse(b"\r\n\r\n").unwrap().is_err());
    }
}
