//! One connection's bytes, in clear or through TLS (rustls), on a non-blocking socket:
//! the server reads what has arrived, queues its answer and writes what the socket
//! takes, and asks poll(2) for writability when TLS has handshake bytes to send.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS certificate chain and its key, read once at start.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map(Arc::new)
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))
}

/// A connection's transport.
pub enum Transport {
    Plain {
        stream: TcpStream,
        /// The answer and how much of it is written.
        out: Vec<u8>,
        done: usize,
    },
    Tls {
        stream: TcpStream,
        tls: Box<ServerConnection>,
    },
}

impl Transport {
    pub fn new(stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        Ok(match tls {
            None => Transport::Plain {
                stream,
                out: vec![],
                done: 0,
            },
            Some(config) => {
                let mut tls = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                // The whole answer is queued at once (a job listing can be large).
                tls.set_buffer_limit(None);
                Transport::Tls {
                    stream,
                    tls: Box::new(tls),
                }
            }
        })
    }

    pub fn stream(&self) -> &TcpStream {
        match self {
            Transport::Plain { stream, .. } | Transport::Tls { stream, .. } => stream,
        }
    }

    /// Whether there are bytes to send before anything else can happen (the TLS
    /// handshake): poll for writability then.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain { out, done, .. } => *done < out.len(),
            Transport::Tls { tls, .. } => tls.wants_write(),
        }
    }

    /// Reads the request bytes that have arrived into `into` (TLS: and sends what the
    /// handshake needs). `Ok(false)` when the peer closed; nothing more for now is
    /// `Ok(true)`.
    pub fn read_available(&mut self, into: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        match self {
            Transport::Plain { stream, .. } => read_plain(stream, into, limit),
            Transport::Tls { stream, tls } => {
                let alive = read_tls(stream, tls, into, limit)?;
                self.flush()?;
                Ok(alive)
            }
        }
    }

    /// Queues the answer; [`Transport::flush`] sends it.
    pub fn queue(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        match self {
            Transport::Plain { out, done, .. } => {
                *out = bytes;
                *done = 0;
                Ok(())
            }
            Transport::Tls { tls, .. } => {
                tls.writer().write_all(&bytes)?;
                tls.send_close_notify();
                Ok(())
            }
        }
    }

    /// Writes what the socket takes; `Ok(true)` once nothing is left to send.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain { stream, out, done } => {
                while *done < out.len() {
                    match stream.write(&out[*done..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => *done += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
            Transport::Tls { stream, tls } => {
                while tls.wants_write() {
                    match tls.write_tls(stream) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
    }
}

fn read_plain(stream: &mut TcpStream, into: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    while into.len() <= limit {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_tls(
    stream: &mut TcpStream,
    tls: &mut ServerConnection,
    into: &mut Vec<u8>,
    limit: usize,
) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    while into.len() <= limit {
        match tls.read_tls(stream) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            // Tell the peer why (an alert), then give up on it.
            let _ = tls.write_tls(stream);
            return Err(io::Error::other(e));
        }
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(true)
}
