//! Concurrent actors, differentially: several actors (threads, each with its own open
//! descriptors) run one seeded interleaving of file operations on the mount and on a
//! plain directory, and every outcome (bytes read, sizes, errno) and the final trees
//! must be the same.
//!
//! The interleaving is a fixed global order of steps across the actors: the runner hands
//! step `i` to its actor and waits for it before step `i + 1`, so both roots see the same
//! order and the outcomes are comparable. What makes it concurrent is what the steps
//! hold: descriptors opened in every mode (O_RDONLY, O_WRONLY|O_CREAT, O_RDWR, O_TRUNC,
//! O_APPEND) stay open across other actors' opens, writes, truncates, renames over them
//! and unlinks. The paths are few, so actors meet on the same files, and they are taken
//! from the registry's layout (tag and layer links, blob data, upload data and
//! `startedat`) and from outside it.
//!
//! Link contents are either a link to a blob that has data or text that is no link, so
//! the mount's link refusal (a link naming a blob without data) never differs from the
//! plain directory on purpose.
//!
//! Settings (environment):
//! - `REGFS_CONC_SEEDS=N`: how many seeds (default 100, the CI setting: about 30 s);
//! - `REGFS_CONC_FIRST=S`: the first seed (default 1); seeds S..S+N are run;
//! - `REGFS_CONC_SEED=S`: replay just seed S (what a failure prints);
//! - `REGFS_CONC_STEPS=N`: steps per sequence (default 48).
//!
//! A failure prints the seed, the whole step list and the first differing step.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use crate::common;
use crate::common::rng::Rng;
use crate::ops::clip;
use crate::outcome::{Fail, R, check, cstr, describe, summarize, walk_string};
use crate::runner::first_item_difference;

const V2: &str = "docker/registry/v2";
const REPO: &str = "docker/registry/v2/repositories/team/app";
/// Blob with data that the links name; never a target of the steps.
const NAMED: u32 = 1;
/// Blobs whose data files the steps read, write, rename and remove.
const LOOSE_BLOBS: [u32; 2] = [2, 3];
const ACTORS: usize = 3;
const SLOTS: usize = 2;

fn hex(n: u32) -> String {
    format!("{:064x}", 0x5eed_u128 * 1_000_003 + n as u128)
}

fn link_to(n: u32) -> String {
    format!("sha256:{}", hex(n))
}

fn blob_data(n: u32) -> String {
    let h = hex(n);
    format!("{V2}/blobs/sha256/{}/{h}/data", &h[..2])
}

/// What a path is, for which renames make sense between paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Outside the registry's tree.
    Loose,
    TagLink,
    LayerLink,
    BlobData,
    UploadData,
    UploadOther,
}

/// The files the steps name.
fn files() -> Vec<(String, Class)> {
    let mut v = vec![
        ("loose/a".to_string(), Class::Loose),
        ("loose/b".to_string(), Class::Loose),
        ("loose/sub/c".to_string(), Class::Loose),
        (
            format!("{REPO}/_manifests/tags/t/current/link"),
            Class::TagLink,
        ),
        (
            format!("{REPO}/_manifests/tags/u/current/link"),
            Class::TagLink,
        ),
        (
            format!("{REPO}/_layers/sha256/{}/link", hex(NAMED)),
            Class::LayerLink,
        ),
        (format!("{REPO}/_uploads/u1/data"), Class::UploadData),
        (format!("{REPO}/_uploads/u1/startedat"), Class::UploadOther),
    ];
    v.extend(LOOSE_BLOBS.iter().map(|n| (blob_data(*n), Class::BlobData)));
    v
}

/// Directories the steps make, remove and rename (`loose/sub` holds one of the files).
const DIRS: [&str; 3] = ["loose/sub", "loose/sub/deeper", "loose/other"];

/// The same starting tree on both roots (on the mount: its backing directory, before it
/// is mounted).
fn seed_tree(root: &Path) {
    for n in [NAMED].iter().chain(LOOSE_BLOBS.iter()) {
        let data = root.join(blob_data(*n));
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, format!("blob {n} content")).unwrap();
    }
    // The revision the tag links name, as a manifest PUT writes it before tagging: the
    // mount refuses a tag naming a manifest the repository holds no revision of.
    let revision = root.join(format!(
        "{REPO}/_manifests/revisions/sha256/{}/link",
        hex(NAMED)
    ));
    fs::create_dir_all(revision.parent().unwrap()).unwrap();
    fs::write(&revision, link_to(NAMED)).unwrap();
    for (f, class) in files() {
        let p = root.join(&f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match class {
            Class::TagLink | Class::LayerLink => fs::write(&p, link_to(NAMED)).unwrap(),
            Class::UploadOther => fs::write(&p, "2026-01-01T00:00:00Z").unwrap(),
            Class::Loose if f.ends_with("/a") => fs::write(&p, "loose a").unwrap(),
            _ => {}
        }
    }
    // The same modes on both roots, whatever the umask was when each was made.
    fix_modes(root);
}

fn fix_modes(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let is_dir = e.file_type().unwrap().is_dir();
        let mode = if is_dir { 0o755 } else { 0o644 };
        fs::set_permissions(e.path(), fs::Permissions::from_mode(mode)).unwrap();
        if is_dir {
            fix_modes(&e.path());
        }
    }
}

/// How a descriptor is opened.
#[derive(Debug, Clone, Copy)]
enum Mode {
    ReadOnly,
    WriteCreate,
    ReadWriteCreate,
    ReadWrite,
    WriteTrunc,
    ReadWriteTrunc,
    AppendCreate,
    ReadAppend,
}

const MODES: [Mode; 8] = [
    Mode::ReadOnly,
    Mode::WriteCreate,
    Mode::ReadWriteCreate,
    Mode::ReadWrite,
    Mode::WriteTrunc,
    Mode::ReadWriteTrunc,
    Mode::AppendCreate,
    Mode::ReadAppend,
];

impl Mode {
    fn options(self) -> OpenOptions {
        let mut o = OpenOptions::new();
        o.mode(0o644);
        match self {
            Mode::ReadOnly => o.read(true),
            Mode::WriteCreate => o.write(true).create(true),
            Mode::ReadWriteCreate => o.read(true).write(true).create(true),
            Mode::ReadWrite => o.read(true).write(true),
            Mode::WriteTrunc => o.write(true).create(true).truncate(true),
            Mode::ReadWriteTrunc => o.read(true).write(true).truncate(true),
            Mode::AppendCreate => o.append(true).create(true),
            Mode::ReadAppend => o.read(true).append(true),
        };
        o
    }
}

/// Bytes a step writes: never a link naming a blob without data.
#[derive(Debug, Clone, Copy)]
enum Content {
    /// A well-formed link to the blob that has data.
    Link,
    /// A few bytes of text that are no link.
    Text(u8),
    /// 5,000 bytes (more than a link holds, less than a page or two).
    Long(u8),
}

impl Content {
    fn bytes(self) -> Vec<u8> {
        match self {
            Content::Link => link_to(NAMED).into_bytes(),
            Content::Text(k) => format!("text-{k};").into_bytes(),
            Content::Long(k) => (0..5000u32)
                .map(|i| b'a' + ((i + k as u32) % 26) as u8)
                .collect(),
        }
    }
}

/// One step of one actor. Paths are indexes into [`files`] / [`DIRS`].
#[derive(Debug, Clone)]
enum Action {
    Open {
        slot: usize,
        file: usize,
        mode: Mode,
    },
    Close {
        slot: usize,
    },
    /// read(2) of up to `n` bytes at the descriptor's position.
    Read {
        slot: usize,
        n: usize,
    },
    Pread {
        slot: usize,
        off: u64,
        n: usize,
    },
    /// write(2) at the descriptor's position (the end, for O_APPEND).
    Write {
        slot: usize,
        data: Content,
    },
    Pwrite {
        slot: usize,
        off: u64,
        data: Content,
    },
    Seek {
        slot: usize,
        off: u64,
    },
    Ftruncate {
        slot: usize,
        len: u64,
    },
    Fsync {
        slot: usize,
    },
    Fstat {
        slot: usize,
    },
    /// The registry's PutContent: open O_WRONLY|O_CREAT, ftruncate(0), write, fsync, close.
    PutContent {
        file: usize,
        data: Content,
    },
    /// open, read it all, close (the registry's GetContent).
    ReadPath {
        file: usize,
    },
    Stat {
        file: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Unlink {
        file: usize,
    },
    Mkdir {
        dir: usize,
    },
    Rmdir {
        dir: usize,
    },
    /// rename(2) of a directory (over an empty one, into itself: the errors too).
    RenameDir {
        from: usize,
        to: usize,
    },
}

#[derive(Clone)]
struct Step {
    actor: usize,
    action: Action,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = files();
        let name = |i: usize| short(&files[i].0);
        let a = &self.action;
        let text = match a {
            Action::Open { slot, file, mode } => format!("open fd{slot} {} {mode:?}", name(*file)),
            Action::PutContent { file, data } => format!("put-content {} {data:?}", name(*file)),
            Action::ReadPath { file } => format!("read-path {}", name(*file)),
            Action::Stat { file } => format!("stat {}", name(*file)),
            Action::Rename { from, to } => format!("rename {} -> {}", name(*from), name(*to)),
            Action::Unlink { file } => format!("unlink {}", name(*file)),
            Action::Mkdir { dir } => format!("mkdir {}", DIRS[*dir]),
            Action::Rmdir { dir } => format!("rmdir {}", DIRS[*dir]),
            Action::RenameDir { from, to } => {
                format!("rename-dir {} -> {}", DIRS[*from], DIRS[*to])
            }
            other => format!("{other:?}"),
        };
        write!(f, "actor {}: {text}", self.actor)
    }
}

/// A path shown without the registry's common prefix.
fn short(p: &str) -> String {
    p.replace(&format!("{REPO}/"), "<repo>/")
        .replace(&format!("{V2}/"), "<v2>/")
}

fn content(rng: &mut Rng) -> Content {
    match rng.below(4) {
        0 | 1 => Content::Link,
        2 => Content::Text(rng.below(10) as u8),
        _ => Content::Long(rng.below(26) as u8),
    }
}

/// A file that may be renamed onto: any file that is no link, and a link from a link
/// (an upload's data onto a blob's data is the registry's commit of a blob). A file
/// renamed onto a link path while it is held open for reading by kernel passthrough
/// cannot be written until then (ETXTBSY, see `fs::io`): the one place the mount differs
/// from a plain directory on purpose, so not generated here.
fn rename_target(rng: &mut Rng, files: &[(String, Class)], from: usize) -> usize {
    let is_link = |c: Class| matches!(c, Class::TagLink | Class::LayerLink);
    let from_link = is_link(files[from].1);
    let fits: Vec<usize> = (0..files.len())
        .filter(|&i| !is_link(files[i].1) || from_link)
        .collect();
    rng.pick(&fits)
}

/// The steps of one seed.
fn generate(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = Rng(seed);
    let files = files();
    // Each sequence has a few hot files, so opens of one file by several actors are common.
    let hot: Vec<usize> = (0..3).map(|_| rng.below(files.len())).collect();
    let mut steps = Vec::with_capacity(len);
    let mut open = [[false; SLOTS]; ACTORS];
    for _ in 0..len {
        let actor = rng.below(ACTORS);
        let slot = rng.below(SLOTS);
        let file = if rng.below(4) == 0 {
            rng.below(files.len())
        } else {
            rng.pick(&hot)
        };
        let held = open[actor][slot];
        let action = match rng.below(100) {
            // Opens are frequent: they are what meets the other actors' descriptors.
            0..=21 => {
                open[actor][slot] = true;
                Action::Open {
                    slot,
                    file,
                    mode: rng.pick(&MODES),
                }
            }
            22..=29 if held => {
                open[actor][slot] = false;
                Action::Close { slot }
            }
            30..=37 => Action::Read {
                slot,
                n: rng.pick(&[16, 71, 4096, 10_000]),
            },
            38..=41 => Action::Pread {
                slot,
                off: rng.pick(&[0, 7, 71, 4096]),
                n: rng.pick(&[16, 100, 8192]),
            },
            42..=51 => Action::Write {
                slot,
                data: content(&mut rng),
            },
            52..=55 => Action::Pwrite {
                slot,
                off: rng.pick(&[0, 3, 71, 6000]),
                data: content(&mut rng),
            },
            56..=58 => Action::Seek {
                slot,
                off: rng.pick(&[0, 10, 71, 9000]),
            },
            59..=63 => Action::Ftruncate {
                slot,
                len: rng.pick(&[0, 0, 5, 71, 7000]),
            },
            64..=66 => Action::Fsync { slot },
            67..=69 => Action::Fstat { slot },
            70..=76 => Action::PutContent {
                file,
                data: content(&mut rng),
            },
            77..=82 => Action::ReadPath { file },
            83..=84 => Action::Stat { file },
            85..=89 => Action::Rename {
                from: file,
                to: rename_target(&mut rng, &files, file),
            },
            90..=93 => Action::Unlink { file },
            94..=96 => Action::Mkdir {
                dir: rng.below(DIRS.len()),
            },
            97..=98 => Action::Rmdir {
                dir: rng.below(DIRS.len()),
            },
            99 => Action::RenameDir {
                from: rng.below(DIRS.len()),
                to: rng.below(DIRS.len()),
            },
            // A close of a slot not held: an open instead.
            _ => {
                open[actor][slot] = true;
                Action::Open {
                    slot,
                    file,
                    mode: rng.pick(&MODES),
                }
            }
        };
        steps.push(Step { actor, action });
    }
    steps
}

/// One actor's descriptors, on one root.
struct Actor {
    root: PathBuf,
    files: Vec<(String, Class)>,
    slots: [Option<File>; SLOTS],
}

fn ebadf() -> Fail {
    Fail("no-descriptor".into())
}

impl Actor {
    fn path(&self, file: usize) -> PathBuf {
        self.root.join(&self.files[file].0)
    }

    fn fd(&mut self, slot: usize) -> Result<&mut File, Fail> {
        self.slots[slot].as_mut().ok_or_else(ebadf)
    }

    fn run(&mut self, action: &Action) -> R {
        match *action {
            Action::Open { slot, file, mode } => {
                // The slot's earlier descriptor is closed first, as a program reusing it.
                self.slots[slot] = None;
                let f = mode.options().open(self.path(file))?;
                let md = f.metadata()?;
                self.slots[slot] = Some(f);
                Ok(describe(&md))
            }
            Action::Close { slot } => {
                let f = self.slots[slot].take().ok_or_else(ebadf)?;
                // close(2) itself: its error (the kernel's FLUSH) is an outcome too.
                use std::os::fd::IntoRawFd;
                // SAFETY: the descriptor was just taken out of its File; closed once.
                check(unsafe { libc::close(f.into_raw_fd()) })?;
                Ok(String::new())
            }
            Action::Read { slot, n } => {
                let f = self.fd(slot)?;
                let mut buf = Vec::new();
                f.take(n as u64).read_to_end(&mut buf)?;
                let pos = f.stream_position()?;
                Ok(format!("pos={pos} {}", summarize(&buf)))
            }
            Action::Pread { slot, off, n } => {
                let f = self.fd(slot)?;
                let mut buf = vec![0u8; n];
                let mut done = 0;
                while done < n {
                    let k = f.read_at(&mut buf[done..], off + done as u64)?;
                    if k == 0 {
                        break;
                    }
                    done += k;
                }
                buf.truncate(done);
                Ok(summarize(&buf))
            }
            Action::Write { slot, data } => {
                let f = self.fd(slot)?;
                f.write_all(&data.bytes())?;
                let pos = f.stream_position()?;
                Ok(format!("pos={pos}"))
            }
            Action::Pwrite { slot, off, data } => {
                let f = self.fd(slot)?;
                let n = f.write_at(&data.bytes(), off)?;
                Ok(format!("wrote={n}"))
            }
            Action::Seek { slot, off } => {
                let f = self.fd(slot)?;
                Ok(format!("pos={}", f.seek(SeekFrom::Start(off))?))
            }
            Action::Ftruncate { slot, len } => {
                let f = self.fd(slot)?;
                f.set_len(len)?;
                Ok(String::new())
            }
            Action::Fsync { slot } => {
                self.fd(slot)?.sync_all()?;
                Ok(String::new())
            }
            Action::Fstat { slot } => Ok(describe(&self.fd(slot)?.metadata()?)),
            Action::PutContent { file, data } => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(self.path(file))?;
                f.set_len(0)?;
                f.write_all(&data.bytes())?;
                f.sync_all()?;
                // close(2) itself: its error (the kernel's FLUSH) is an outcome too.
                use std::os::fd::IntoRawFd;
                // SAFETY: the descriptor was just taken out of its File; closed once.
                check(unsafe { libc::close(f.into_raw_fd()) })?;
                Ok(String::new())
            }
            Action::ReadPath { file } => Ok(summarize(&fs::read(self.path(file))?)),
            Action::Stat { file } => Ok(describe(&fs::metadata(self.path(file))?)),
            Action::Rename { from, to } => {
                fs::rename(self.path(from), self.path(to))?;
                Ok(describe(&fs::metadata(self.path(to))?))
            }
            Action::Unlink { file } => {
                fs::remove_file(self.path(file))?;
                Ok(String::new())
            }
            Action::Mkdir { dir } => {
                // SAFETY: a NUL-terminated path; mkdir(2) only reads it.
                check(unsafe { libc::mkdir(cstr(&self.root.join(DIRS[dir])).as_ptr(), 0o755) })?;
                Ok(String::new())
            }
            Action::Rmdir { dir } => {
                fs::remove_dir(self.root.join(DIRS[dir]))?;
                Ok(String::new())
            }
            Action::RenameDir { from, to } => {
                fs::rename(self.root.join(DIRS[from]), self.root.join(DIRS[to]))?;
                Ok(describe(&fs::metadata(self.root.join(DIRS[to]))?))
            }
        }
    }
}

/// Runs `steps` on `root` with one thread per actor, in the steps' order; the outcome
/// of each step, then the tree as seen through `root` once every descriptor is closed.
fn run_on(root: &Path, steps: &[Step]) -> (Vec<String>, String) {
    let mut to_actor = Vec::new();
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let mut threads = Vec::new();
    for _ in 0..ACTORS {
        let (tx, rx) = mpsc::channel::<Action>();
        to_actor.push(tx);
        let done = done_tx.clone();
        let mut actor = Actor {
            root: root.to_path_buf(),
            files: files(),
            slots: Default::default(),
        };
        threads.push(std::thread::spawn(move || {
            for action in rx {
                let out = match actor.run(&action) {
                    Ok(v) => format!("ok:{v}"),
                    Err(Fail(e)) => format!("err:{e}"),
                };
                done.send(out).unwrap();
            }
            // Every descriptor is closed as the actor ends.
        }));
    }
    let mut outcomes = Vec::with_capacity(steps.len());
    for s in steps {
        to_actor[s.actor].send(s.action.clone()).unwrap();
        outcomes.push(done_rx.recv().expect("actor died"));
    }
    drop(to_actor);
    for t in threads {
        t.join().unwrap();
    }
    let tree = walk_string(root, "").unwrap_or_else(|Fail(e)| format!("walk failed: {e}"));
    (outcomes, tree)
}

fn listing(steps: &[Step]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("    #{i} {s:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs one seed on a fresh mount and a plain directory; a description of the first
/// difference, if any.
fn check_seed(seed: u64, len: usize) -> Option<Result<(), (String, String)>> {
    let steps = generate(seed, len);
    // Mount first: mounting sets the process umask, which both runs must share.
    let m = common::mount_with(seed_tree)?;
    let plain = common::tempdir();
    seed_tree(plain.path());
    let (want, want_tree) = run_on(plain.path(), &steps);
    let (got, got_tree) = run_on(&m.mnt, &steps);
    let backing = walk_string(&m.storage, "").unwrap_or_else(|Fail(e)| e);
    let replay = format!(
        "seed {seed} (replay: REGFS_CONC_SEED={seed} REGFS_CONC_STEPS={len} cargo test --test differential concurrent)"
    );
    if let Some(i) = (0..steps.len()).find(|&i| want[i] != got[i]) {
        let around: Vec<String> = (0..steps.len())
            .filter(|&k| want[k] != got[k])
            .take(8)
            .map(|k| {
                format!(
                    "    #{k} {:?}\n      plain: {}\n      mount: {}",
                    steps[k],
                    clip(&want[k], 300),
                    clip(&got[k], 300)
                )
            })
            .collect();
        let headline = format!(
            "seed {seed} step #{i} {:?}: plain {} / mount {}",
            steps[i],
            clip(&want[i], 80),
            clip(&got[i], 80)
        );
        return Some(Err((
            headline,
            format!(
                "{replay}: step #{i} differs ({:?})\n  plain: {}\n  mount: {}\n  differing steps:\n{}\n  steps:\n{}",
                steps[i],
                clip(&want[i], 500),
                clip(&got[i], 500),
                around.join("\n"),
                listing(&steps)
            ),
        )));
    }
    for (what, tree) in [("mount", &got_tree), ("backing directory", &backing)] {
        if *tree != want_tree {
            let detail = first_item_difference(&want_tree, tree).unwrap_or_default();
            return Some(Err((
                format!("seed {seed}: final trees differ (plain vs {what}): {detail}"),
                format!(
                    "{replay}: every step matched but the final trees differ (plain vs {what})\n  {detail}\n  steps:\n{}",
                    listing(&steps)
                ),
            )));
        }
    }
    Some(Ok(()))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[test]
fn concurrent_actors_with_held_descriptors_match_a_plain_directory() {
    let len = env_u64("REGFS_CONC_STEPS").unwrap_or(48) as usize;
    let seeds: Vec<u64> = match env_u64("REGFS_CONC_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("REGFS_CONC_FIRST").unwrap_or(1);
            let n = env_u64("REGFS_CONC_SEEDS").unwrap_or(100);
            (first..first + n).collect()
        }
    };
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut ran = 0;
    for &seed in &seeds {
        match check_seed(seed, len) {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => failures.push((seed, e)),
        }
        ran += 1;
    }
    eprintln!(
        "{ran} sequences of {len} steps by {ACTORS} actors in {:?}; {} failed",
        start.elapsed(),
        failures.len()
    );
    if let Some((_, (_, first))) = failures.first() {
        let headlines: Vec<&str> = failures.iter().map(|(_, (h, _))| h.as_str()).collect();
        panic!(
            "{} of {ran} seeded sequences differ from a plain directory:\n  {}\nthe first in full:\n{first}",
            failures.len(),
            headlines.join("\n  ")
        );
    }
}
