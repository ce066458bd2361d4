//! The daemon's HTTP server (metrics, the API and the page): one poll thread
//! multiplexing a bounded number of connections with poll(2), one request per
//! connection, in clear or TLS, and a small pool of handler threads ([`super::pool`]).
//! The poll thread only reads and writes sockets, so a slow handler (a bcrypt check of a
//! wrong password takes about a second) never keeps a scrape waiting for the socket.
//! Whoever can reach the port cannot make the daemon spend threads, descriptors or
//! memory: at most [`MAX_CONNECTIONS`] are open, each reading its request and writing
//! its answer for at most [`CONNECTION_TIMEOUT`]; when all are taken the one that has
//! waited longest without sending a request is closed to make room, so a scraper that
//! sends its request at once is always answered; and a request that finds the
//! handlers' queue full is answered 503 at once.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::message::{MAX_BODY, MAX_HEAD, Response, parse};
use super::pool::{Handler, Pool, Refused};
use super::transport::Transport;
use crate::worker::Worker;

/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its request, and again to take its answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handler may take before the request is answered 503 without it.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a connection is in its one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its request is arriving.
    Reading,
    /// A worker has its request.
    Handling,
    /// Its answer is being written.
    Writing,
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    transport: Transport,
    /// When the current phase's clock started.
    since: Instant,
    phase: Phase,
    /// The request as received so far.
    input: Vec<u8>,
}

impl Conn {
    fn expired(&self) -> bool {
        let limit = match self.phase {
            Phase::Handling => HANDLER_TIMEOUT,
            Phase::Reading | Phase::Writing => CONNECTION_TIMEOUT,
        };
        self.since.elapsed() >= limit
    }

    /// Starts writing `resp`; `false` when the connection is done with.
    fn answer(&mut self, resp: Response) -> bool {
        self.phase = Phase::Writing;
        self.since = Instant::now();
        if self.transport.queue(resp.encode()).is_err() {
            return false;
        }
        write_answer(self)
    }
}

/// Reads what the peer sent and hands a complete request to the pool; `false` when the
/// connection is done with.
fn read_request(c: &mut Conn, pool: &Pool) -> bool {
    match c
        .transport
        .read_available(&mut c.input, MAX_HEAD + MAX_BODY)
    {
        Ok(true) => {}
        Ok(false) | Err(_) => return false,
    }
    match parse(&c.input) {
        None => true,
        Some(Err(refusal)) => c.answer(refusal.response()),
        Some(Ok(mut req)) => {
            req.peer = Some(c.peer);
            c.input = Vec::new();
            match pool.submit(c.id, req) {
                Ok(()) => {
                    c.phase = Phase::Handling;
                    c.since = Instant::now();
                    true
                }
                Err(Refused::Busy) => c.answer(busy("every handler is busy")),
                Err(Refused::Stopping) => c.answer(busy("the daemon is stopping")),
            }
        }
    }
}

fn busy(why: &str) -> Response {
    let body = serde_json::json!({ "error": format!("{why}; try again"), "status": 503 });
    Response::new(503, "application/json", format!("{body}\n").into_bytes())
        .with_header("Retry-After", "1")
}

/// Writes what it can of the answer; `false` once it is all written (or cannot be).
fn write_answer(c: &mut Conn) -> bool {
    match c.transport.flush() {
        Ok(false) => true,
        Ok(true) | Err(_) => {
            let _ = c.transport.stream().shutdown(std::net::Shutdown::Write);
            false
        }
    }
}

/// Serves one connection poll(2) found ready; `false` when it is done with.
fn service(c: &mut Conn, pool: &Pool) -> bool {
    match c.phase {
        // TLS: handshake bytes first.
        Phase::Reading => c.transport.flush().is_ok() && read_request(c, pool),
        Phase::Handling => c.transport.flush().is_ok(),
        Phase::Writing => write_answer(c),
    }
}

/// The server's state on its poll thread.
struct Listener {
    socket: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: Vec<Conn>,
    next_id: u64,
    pool: Pool,
}

impl Listener {
    /// Accepts what is pending, making room by closing the connection that has waited
    /// longest for its request (or, when every one is past that, refusing the new one).
    fn accept(&mut self) {
        loop {
            match self.socket.accept() {
                Ok((stream, peer)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= MAX_CONNECTIONS {
                        let oldest = self
                            .conns
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.phase == Phase::Reading)
                            .min_by_key(|(_, c)| c.since)
                            .map(|(i, _)| i);
                        match oldest {
                            Some(i) => drop(self.conns.swap_remove(i)),
                            None => continue,
                        }
                    }
                    let Ok(transport) = Transport::new(stream, self.tls.as_ref()) else {
                        continue;
                    };
                    self.next_id += 1;
                    self.conns.push(Conn {
                        id: self.next_id,
                        peer,
                        transport,
                        since: Instant::now(),
                        phase: Phase::Reading,
                        input: Vec::new(),
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

    /// Starts writing the answers the workers have ready.
    fn deliver(&mut self) {
        for (id, resp) in self.pool.answers() {
            let at = self
                .conns
                .iter()
                .position(|c| c.id == id && c.phase == Phase::Handling);
            // Gone (timed out or closed): the answer has nobody to go to.
            if let Some(i) = at
                && !self.conns[i].answer(resp)
            {
                self.conns.swap_remove(i);
            }
        }
    }

    /// One round: wait for something to happen (at most [`ROUND`]), then serve it.
    fn turn(&mut self) {
        // What to poll: the listener, the pool's wake-up, and each connection that
        // waits for its peer (one whose request is with a worker waits for nothing).
        let (ready, polled): (Vec<PollFlags>, Vec<usize>) = {
            let mut fds = Vec::with_capacity(self.conns.len() + 2);
            let mut polled = Vec::with_capacity(self.conns.len());
            fds.push(PollFd::new(&self.socket, PollFlags::IN));
            fds.push(PollFd::new(self.pool.wake(), PollFlags::IN));
            for (i, c) in self.conns.iter().enumerate() {
                let mut want = PollFlags::empty();
                if c.phase == Phase::Reading {
                    want |= PollFlags::IN;
                }
                if c.transport.wants_write() {
                    want |= PollFlags::OUT;
                }
                if !want.is_empty() {
                    fds.push(PollFd::from_borrowed_fd(c.transport.stream().as_fd(), want));
                    polled.push(i);
                }
            }
            let timeout = Timespec::try_from(ROUND).expect("a short timeout");
            if poll(&mut fds, Some(&timeout)).is_err() {
                return;
            }
            (fds.iter().map(|f| f.revents()).collect(), polled)
        };
        let mut done = vec![false; self.conns.len()];
        for (&i, flags) in polled.iter().zip(&ready[2..]) {
            if !flags.is_empty() {
                done[i] = !service(&mut self.conns[i], &self.pool);
            }
        }
        let mut i = 0;
        self.conns.retain_mut(|c| {
            let keep = !done[i];
            i += 1;
            if keep && c.expired() {
                // A handler past its time: answered without it; a peer past its time:
                // closed.
                return c.phase == Phase::Handling
                    && c.answer(busy("the request took too long to handle"));
            }
            keep
        });
        if !ready[1].is_empty() {
            self.deliver();
        }
        if !ready[0].is_empty() {
            self.accept();
        }
    }
}

/// The longest wait for something to happen before the server looks whether to stop.
const ROUND: Duration = Duration::from_millis(200);

/// What a server does with its connections.
pub struct Serving {
    /// Answers a request; runs on the handler threads.
    pub handler: Handler,
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
    /// Stops serving (within one round, [`ROUND`], and the requests in hand), closes
    /// every connection and joins the poll thread and every handler thread.
    pub fn stop(self) {
        self.worker.stop();
    }
}

/// Listens on `addr` and serves requests: a poll thread and [`super::pool::WORKERS`]
/// handler threads.
pub fn serve(addr: SocketAddr, serving: Serving) -> io::Result<Server> {
    let socket = TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    let bound = socket.local_addr()?;
    let pool = Pool::start(serving.handler)?;
    let mut listener = Listener {
        socket,
        tls: serving.tls,
        conns: Vec::new(),
        next_id: 0,
        pool,
    };
    let worker = Worker::spawn("regfs-http", move |stop| {
        while !stop.is_set() {
            listener.turn();
        }
        listener.conns.clear();
        listener.pool.stop();
    })?;
    Ok(Server { bound, worker })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Request;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    }

    #[test]
    fn a_slow_handler_leaves_the_others_free_and_stop_joins_it() {
        let (started, finished) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, f) = (started.clone(), finished.clone());
        let server = serve(
            ([127, 0, 0, 1], 0).into(),
            Serving {
                handler: Arc::new(move |req: &Request| {
                    if req.path == "/slow" {
                        s.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1500));
                        f.store(true, Ordering::SeqCst);
                    }
                    Response::text(200, &req.path)
                }),
                tls: None,
            },
        )
        .unwrap();
        let base = format!("http://{}", server.bound);
        let slow = {
            let url = format!("{base}/slow");
            std::thread::spawn(move || agent().get(url).call().map(|r| r.status().as_u16()))
        };
        while !started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Answered while the slow one runs.
        let t = Instant::now();
        let mut quick = agent().get(format!("{base}/quick")).call().unwrap();
        assert_eq!(quick.body_mut().read_to_string().unwrap(), "/quick");
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert!(!finished.load(Ordering::SeqCst));
        // Stopping waits for the handler in hand: its thread is joined.
        server.stop();
        assert!(
            finished.load(Ordering::SeqCst),
            "stop returned before the handler ended"
        );
        let _ = slow.join();
    }
}
