//! The daemon's HTTP server (metrics, the API and the page): one thread multiplexing a
//! bounded number of connections with poll(2), one request per connection, in clear or
//! TLS. Whoever can reach the port
//! cannot make the daemon spend threads or descriptors: at most [`MAX_CONNECTIONS`]
//! are open, each for at most [`CONNECTION_TIMEOUT`], and when all are taken the one
//! that has waited longest without sending a request is closed to make room, so a
//! scraper that sends its request at once is always answered.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::message::{MAX_BODY, MAX_HEAD, Request, Response, parse};
use super::transport::Transport;
use crate::worker::Worker;

/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection's whole life: request in, answer out.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    transport: Transport,
    opened: Instant,
    /// The request as received so far.
    input: Vec<u8>,
    answered: bool,
}

impl Conn {
    fn waiting_for_request(&self) -> bool {
        !self.answered
    }
}

/// Reads what the peer sent and answers once the request is complete; `false` when the
/// connection is done with.
fn read_request(c: &mut Conn, handler: &dyn Fn(&Request) -> Response) -> bool {
    match c
        .transport
        .read_available(&mut c.input, MAX_HEAD + MAX_BODY)
    {
        Ok(true) => {}
        Ok(false) | Err(_) => return false,
    }
    let resp = match parse(&c.input) {
        None => return true,
        Some(Err(refusal)) => refusal.response(),
        Some(Ok(req)) => handler(&req),
    };
    c.answered = true;
    if c.transport.queue(resp.encode()).is_err() {
        return false;
    }
    write_answer(c)
}

/// Writes what it can of the answer (or of a TLS handshake); `false` once the answer is
/// all written (or cannot be).
fn write_answer(c: &mut Conn) -> bool {
    match c.transport.flush() {
        Ok(false) => true,
        Ok(true) if !c.answered => true,
        Ok(true) | Err(_) => {
            let _ = c.transport.stream().shutdown(std::net::Shutdown::Write);
            false
        }
    }
}

/// Accepts what is pending, making room by closing the connection that has waited
/// longest for its request.
fn accept(listener: &TcpListener, conns: &mut Vec<Conn>, tls: Option<&Arc<rustls::ServerConfig>>) {
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
                let Ok(transport) = Transport::new(stream, tls) else {
                    continue;
                };
                conns.push(Conn {
                    transport,
                    opened: Instant::now(),
                    input: Vec::new(),
                    answered: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: let the backlog wait rather than spin.
                tracing::debug!(error = %e, "http: accept failed");
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

/// The longest wait for something to happen before the server looks whether to stop.
const ROUND: Duration = Duration::from_millis(200);

/// One round: wait for something to happen (at most [`ROUND`]), then serve it.
fn turn(listener: &TcpListener, conns: &mut Vec<Conn>, serving: &Serving) {
    let ready: Vec<PollFlags> = {
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(listener, PollFlags::IN));
        for c in conns.iter() {
            let mut want = PollFlags::empty();
            if c.waiting_for_request() {
                want |= PollFlags::IN;
            }
            if c.transport.wants_write() {
                want |= PollFlags::OUT;
            }
            fds.push(PollFd::from_borrowed_fd(c.transport.stream().as_fd(), want));
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
            write_answer(&mut c) && read_request(&mut c, &*serving.handler)
        } else {
            write_answer(&mut c)
        };
        if alive && c.opened.elapsed() < CONNECTION_TIMEOUT {
            keep.push(c);
        }
    }
    *conns = keep;
    if !ready[0].is_empty() {
        accept(listener, conns, serving.tls.as_ref());
    }
}

/// What a server does with its connections.
pub struct Serving {
    pub handler: Box<dyn Fn(&Request) -> Response + Send>,
    /// Serve TLS with this configuration, not clear text.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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

/// Listens on `addr` and serves requests on one background thread.
pub fn serve(addr: SocketAddr, serving: Serving) -> io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let worker = Worker::spawn("regfs-http", move |stop| {
        let mut conns = Vec::new();
        while !stop.is_set() {
            turn(&listener, &mut conns, &serving);
        }
    })?;
    Ok(Server { bound, worker })
}
