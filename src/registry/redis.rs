//! A minimal redis client (RESP2 over TCP, std only): enough to check that the registry's
//! redis answers and to remove the cache keys of blobs GC deleted. Every call has a
//! timeout, so an unreachable or silent redis never hangs a GC run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use thiserror::Error;

use super::config::RedisTarget;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest reply line or bulk string accepted (keys and SCAN cursors are short).
const MAX_REPLY: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum RedisError {
    #[error("redis at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis at {addr} answered {message:?}")]
    Refused { addr: String, message: String },
    #[error("redis at {addr}: malformed reply ({0})", .what)]
    Protocol { addr: String, what: &'static str },
}

/// A reply, as far as this client needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

pub struct Redis {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Redis {
    /// Connects, authenticates with the registry's password and selects its database.
    pub fn connect(target: &RedisTarget) -> Result<Redis, RedisError> {
        let addr = target.addr.clone();
        let io = |source| RedisError::Io {
            addr: addr.clone(),
            source,
        };
        let sock = target
            .addr
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| io(std::io::Error::other("address resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(io)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut r = Redis {
            addr: addr.clone(),
            reader: BufReader::new(stream),
            writer,
        };
        if let Some(p) = &target.password {
            r.call(&[b"AUTH", p.as_bytes()])?;
        }
        if target.db != 0 {
            r.call(&[b"SELECT", target.db.to_string().as_bytes()])?;
        }
        Ok(r)
    }

    pub fn ping(&mut self) -> Result<(), RedisError> {
        self.call(&[b"PING"]).map(drop)
    }

    /// Sends one command and reads its reply; an error reply is an error.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&req).map_err(|e| self.io(e))?;
        self.reply(0)
    }

    fn io(&self, source: std::io::Error) -> RedisError {
        RedisError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn protocol(&self, what: &'static str) -> RedisError {
        RedisError::Protocol {
            addr: self.addr.clone(),
            what,
        }
    }

    fn line(&mut self) -> Result<String, RedisError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY as u64)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.io(e))?;
        if n == 0 || !buf.ends_with(b"\r\n") {
            return Err(self.protocol("connection closed or line too long"));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|_| self.protocol("reply line is not text"))
    }

    fn reply(&mut self, depth: usize) -> Result<Reply, RedisError> {
        if depth > 4 {
            return Err(self.protocol("nested too deep"));
        }
        let line = self.line()?;
        let (kind, rest) = line
            .split_at_checked(1)
            .ok_or(self.protocol("empty line"))?;
        let num = |s: &str| s.parse::<i64>().map_err(|_| self.protocol("bad number"));
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Err(RedisError::Refused {
                addr: self.addr.clone(),
                message: rest.to_string(),
            }),
            ":" => Ok(Reply::Int(num(rest)?)),
            "$" => {
                let len = num(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| self.protocol("bad length"))?;
                if len > MAX_REPLY {
                    return Err(self.protocol("bulk reply too long"));
                }
                let mut data = vec![0u8; len + 2];
                self.reader.read_exact(&mut data).map_err(|e| self.io(e))?;
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let n = num(rest)?;
                let n = usize::try_from(n).unwrap_or(0).min(MAX_REPLY);
                (0..n)
                    .map(|_| self.reply(depth + 1))
                    .collect::<Result<_, _>>()
                    .map(Reply::Array)
            }
            _ => Err(self.protocol("unknown reply type")),
        }
    }

    /// Every key matching `pattern`, by SCAN (never KEYS: it would block the server).
    pub fn scan(&mut self, pattern: &str) -> Result<Vec<String>, RedisError> {
        let mut cursor = "0".to_string();
        let mut keys = Vec::new();
        loop {
            let r = self.call(&[
                b"SCAN",
                cursor.as_bytes(),
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ])?;
            let Reply::Array(parts) = r else {
                return Err(self.protocol("SCAN did not answer an array"));
            };
            let [Reply::Bulk(Some(next)), Reply::Array(found)] = &parts[..] else {
                return Err(self.protocol("SCAN answered an unexpected shape"));
            };
            for k in found {
                if let Reply::Bulk(Some(k)) = k {
                    keys.push(String::from_utf8_lossy(k).into_owned());
                }
            }
            cursor = String::from_utf8_lossy(next).into_owned();
            if cursor == "0" {
                return Ok(keys);
            }
        }
    }
}
