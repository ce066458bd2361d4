//! The listener under password guessing: bcrypt is slow on purpose (about a second at
//! cost 13), and the checks must not starve `/metrics` and the page, nor let a guesser
//! go on unchecked.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::fixture::{Env, USER, env};

/// Guessers sending wrong passwords at once.
pub const GUESSERS: usize = 8;

/// An htpasswd file at bcrypt cost 13, as a careful operator makes it.
pub fn costly_htpasswd(e: &Env) {
    let out = Command::new("htpasswd")
        .args(["-B", "-C", "13", "-b", "-c"])
        .arg(&e.htpasswd)
        .args([USER, crate::fixture::PASSWORD])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        crate::common::describe_output(&out)
    );
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .proxy(None)
        .max_redirects(0)
        .build()
        .into()
}

/// `GUESSERS` threads posting wrong passwords until `stop`; the statuses they got (0:
/// no answer).
pub fn guessers(base: &str, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<u16>>> {
    (0..GUESSERS)
        .map(|i| {
            let (url, stop) = (format!("{base}/api/v1/gc"), stop.clone());
            std::thread::spawn(move || {
                let auth =
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:wrong-{i}"));
                let agent = agent(Duration::from_secs(60));
                let mut statuses = vec![];
                while !stop.load(Ordering::SeqCst) {
                    // No answer at all (the connection dropped) is 0.
                    let status = agent
                        .post(&url)
                        .header("Authorization", format!("Basic {auth}"))
                        .send_empty()
                        .map_or(0, |r| r.status().as_u16());
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect()
}

/// One `/metrics` scrape: how long it took, or why it failed.
pub fn scrape(agent: &ureq::Agent, base: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut r = agent
        .get(format!("{base}/metrics"))
        .call()
        .map_err(|e| format!("after {:?}: {e}", started.elapsed()))?;
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if r.status() != 200 || !body.contains("regfs_gc_state") {
        return Err(format!("{}: {body}", r.status()));
    }
    Ok(started.elapsed())
}

#[test]
fn metrics_answer_while_clients_send_wrong_passwords() {
    let Some(e) = env(&[]) else { return };
    costly_htpasswd(&e);
    let _d = e.start(&[]);
    let base = e.base();
    let quick = agent(Duration::from_secs(2));
    scrape(&quick, &base).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let guessing = guessers(&base, &stop);
    // Let the guessers fill the listener with bcrypt checks first.
    std::thread::sleep(Duration::from_millis(500));
    let mut took = vec![];
    for _ in 0..12 {
        // Old listener: each scrape waited behind every pending check (timeouts at 10 s).
        match scrape(&quick, &base) {
            Ok(t) => took.push(t),
            Err(err) => {
                stop.store(true, Ordering::SeqCst);
                panic!(
                    "/metrics not answered within 2 s while {GUESSERS} clients guess passwords: {err}; earlier scrapes took {took:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    let statuses: Vec<u16> = guessing
        .into_iter()
        .flat_map(|g| g.join().unwrap())
        .collect();
    println!("scrapes took {took:?}; guessers got {statuses:?}");
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "a wrong password is refused (401) or slowed down (429): {statuses:?}"
    );
}

/// The figure for the notes: `/metrics` latency while 8 clients guess passwords, for
/// `REGFS_BENCH_SECS` seconds (30 by default), a scrape every 100 ms, each given 10 s.
/// `cargo test --release --test web_api metrics_latency -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: run by hand, see the doc comment"]
fn metrics_latency_while_clients_send_wrong_passwords() {
    let Some(e) = env(&[]) else { return };
    costly_htpasswd(&e);
    let _d = e.start(&[]);
    let base = e.base();
    let secs: u64 = std::env::var("REGFS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let patient = agent(Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let guessing = guessers(&base, &stop);
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut took, mut failed) = (vec![], 0);
    while Instant::now() < end {
        match scrape(&patient, &base) {
            Ok(t) => took.push(t),
            Err(_) => {
                failed += 1;
                took.push(Duration::from_secs(10));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let statuses: Vec<u16> = guessing
        .into_iter()
        .flat_map(|g| g.join().unwrap())
        .collect();
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    println!(
        "/metrics under {GUESSERS} wrong-password clients (bcrypt cost 13), {secs} s: {} scrapes, \
         p50 {:?}, p99 {:?}, max {:?}, {failed} not answered within 10 s; guesses answered: \
         {} 401, {} 429, {} 503, {} no answer",
        took.len(),
        at(0.5),
        at(0.99),
        took[took.len() - 1],
        count(401),
        count(429),
        count(503),
        count(0)
    );
}

/// POST /api/v1/gc with `Authorization: auth`: the status and `Retry-After`.
fn post_gc(agent: &ureq::Agent, base: &str, auth: &str) -> (u16, Option<u64>) {
    let r = agent
        .post(format!("{base}/api/v1/gc"))
        .header("Authorization", auth)
        .send_empty()
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (r.status().as_u16(), retry)
}

#[test]
fn a_password_guesser_is_slowed_down_and_told_when_to_retry() {
    let Some(e) = env(&[]) else { return };
    let _d = e.start(&[]);
    let base = e.base();
    let agent = agent(Duration::from_secs(30));
    let basic = |user: &str, password: &str| {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {creds}")
    };
    // A handful of wrong passwords are answered 401...
    let mut statuses = vec![];
    for i in 0..10 {
        statuses.push(post_gc(&agent, &base, &basic(USER, &format!("wrong-{i}"))).0);
    }
    assert_eq!(statuses, vec![401; 10]);
    // ... then this client is refused whatever it sends, and told when to try again.
    let (status, retry) = post_gc(&agent, &base, &basic(USER, crate::fixture::PASSWORD));
    assert_eq!(status, 429, "the right password while throttled");
    let retry = retry.expect("Retry-After");
    assert!((1..=10).contains(&retry), "Retry-After: {retry}");
    let token = format!("Bearer {}", crate::fixture::TOKEN);
    assert_eq!(post_gc(&agent, &base, &token).0, 429, "the token too");
    // Reads are never throttled.
    let status = agent.get(format!("{base}/api/v1/status")).call().unwrap();
    assert_eq!(status.status(), 200);
    // Once the wait is over, the right credentials work again.
    std::thread::sleep(Duration::from_secs(retry));
    assert_eq!(post_gc(&agent, &base, &token).0, 202);
}
