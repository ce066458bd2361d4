//! The daemon's HTTP listener (`--http-listen`, once `--metrics-listen`): a bounded
//! one-thread server ([`server`]) for the metrics, the API and the page, in clear or TLS.

pub mod message;
pub mod server;
pub mod transport;

pub use message::{Request, Response};
pub use server::{Server, Serving, serve};
