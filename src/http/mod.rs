//! The daemon's HTTP listener (`--http-listen`, once `--metrics-listen`) for the
//! metrics, the API and the page, in clear or TLS: a bounded server ([`server`]) of one
//! poll thread for the sockets and a small pool of handler threads ([`pool`]).

pub mod message;
pub mod pool;
pub mod server;
pub mod transport;

pub use message::{Request, Response};
pub use server::{Server, Serving, serve};
