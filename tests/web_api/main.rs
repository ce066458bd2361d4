//! The garbage-collection page and its API, as operators and their browsers use them:
//! `regfs mount --http-listen` as a child process over a real FUSE mount, the API driven
//! with curl (status codes, credentials refused and accepted, TLS, a change surviving a
//! restart) and the page driven in Debian's headless chromium over the DevTools
//! protocol. Each test has its own store, mount point, state directory and port.
mod api;
mod cdp;
#[path = "../common/mod.rs"]
mod common;
mod contention;
mod fixture;
mod page;
mod retention_api;
mod retention_page;
mod tls;
