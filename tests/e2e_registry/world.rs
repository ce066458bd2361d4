//! One test's world: a regfs daemon mounting a fresh store, Debian's docker-registry
//! serving it as its own user, and skopeo's private directory tree.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::describe_output;
use crate::common::prereq::Needs;
use crate::common::redis::RedisServer;
use crate::ctx::{Ctx, Mode, generate_images};
use crate::support::{
    Daemon, REGISTRY_PASSWORD, REGISTRY_USER, Registry, clean_stale_mounts, free_port, http,
    registry_user, run, script, user,
};
use crate::{BIN, DRAIN_TIMEOUT, PREFIX};

/// The processes of one scenario. Fields drop in order: the registry stops first (it has
/// files open on the mount), then the daemon (which unmounts), then the directory goes.
pub struct World {
    pub registry: Option<Registry>,
    pub daemon: Option<Daemon>,
    /// The registry's redis ([`Cache::Redis`]), stopped after the registry.
    pub redis: Option<RedisServer>,
    pub ctx: Arc<Ctx>,
    pub daemon_pid: u32,
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.registry.take());
        drop(self.daemon.take());
        drop(self.redis.take());
        // REGFS_E2E_KEEP=1 keeps the directory (logs, store) for inspection.
        if let Some(d) = self.dir.take()
            && std::env::var_os("REGFS_E2E_KEEP").is_some()
        {
            let _ = d.keep();
        }
    }
}

pub fn mkdir_owned(path: &Path, ids: (u32, u32), mode: u32) {
    fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn start_daemon(
    store: &Path,
    mnt: &Path,
    state: &Path,
    log: &Path,
    mode: Mode,
    extra: &[std::ffi::OsString],
) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.arg("mount")
        .arg(store)
        .arg(mnt)
        .arg("--state-dir")
        .arg(state)
        .args(["--drain-timeout", DRAIN_TIMEOUT])
        // Fresh garbage goes: the scenarios delete and collect at once.
        .args(["--gc-min-age", "0s"])
        .args(extra);
    if mode == Mode::DeleteUntagged {
        cmd.arg("--delete-untagged");
    }
    let logf = File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("regfs mount");
    let mut d = Daemon {
        child,
        mnt: mnt.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    // Mounted, answering, and its control socket up.
    loop {
        let mounted = regfs::mount::mount_at(mnt).is_some_and(|m| m.fstype.starts_with("fuse"))
            && rustix::fs::statfs(mnt).is_ok();
        if mounted {
            let mut c = Command::new(BIN);
            c.args(["status", "--json"])
                .arg(mnt)
                .arg("--state-dir")
                .arg(state);
            if run(c, Duration::from_secs(10)).status.success() {
                return d;
            }
        }
        if let Ok(Some(st)) = d.child.try_wait() {
            panic!(
                "regfs mount exited with {st}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "regfs did not mount and answer within 15 s: {}",
            fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// How a test runs the registry's blob-descriptor cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Debian's default config.yml (`inmemory`), started with the environment the
    /// shipped drop-in gives it (which turns the cache off).
    DropIn,
    /// Debian's default config.yml without the drop-in: the in-memory cache in force.
    InMemory,
    /// `storage.cache.blobdescriptor: redis` at a redis-server the test starts, as a later
    /// drop-in setting the variable to `redis` runs it.
    Redis,
}

/// Debian's default registry configuration, as the docker-registry package installs it.
pub const DEBIAN_CONFIG: &str = "/etc/docker/registry/config.yml";
const CACHE_ENV: &str = "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR";

/// The `Environment=` settings of the shipped docker-registry drop-in.
pub fn drop_in_environment() -> Vec<(String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-registry.service.d/regfs.conf");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Debian's config.yml, changed only where a test must: the storage is the mount, the
/// address a free loopback port, the htpasswd file the test's own (the default names a
/// directory, so every request would be refused), and for [`Cache::Redis`] the cache.
pub fn registry_config(mnt: &Path, port: u16, htpasswd: &Path, redis: Option<&str>) -> String {
    let text = fs::read_to_string(DEBIAN_CONFIG).unwrap_or_else(|e| {
        panic!("{DEBIAN_CONFIG} (installed by the docker-registry package): {e}")
    });
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).expect("Debian's config.yml");
    assert_eq!(
        v["storage"]["cache"]["blobdescriptor"].as_str(),
        Some("inmemory"),
        "{DEBIAN_CONFIG}: the Debian default this test is about"
    );
    v["storage"]["filesystem"]["rootdirectory"] = mnt.display().to_string().into();
    v["http"]["addr"] = format!("127.0.0.1:{port}").into();
    v["auth"]["htpasswd"]["path"] = htpasswd.display().to_string().into();
    if let Some(addr) = redis {
        v["storage"]["cache"]["blobdescriptor"] = "redis".into();
        v["redis"]["addr"] = addr.into();
    }
    serde_yaml::to_string(&v).unwrap()
}

/// The registry's htpasswd file (bcrypt, as the registry requires), readable by it.
pub fn write_htpasswd(path: &Path) {
    let mut cmd = Command::new("htpasswd");
    cmd.args(["-nbB", REGISTRY_USER, REGISTRY_PASSWORD]);
    let out = run(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "htpasswd: {}", describe_output(&out));
    fs::write(path, &out.stdout).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

/// What the registry is started with.
pub struct RegistrySetup {
    /// Its config.yml (regfs is given the same path with --registry-config).
    pub config: PathBuf,
    pub mnt: PathBuf,
    pub htpasswd: PathBuf,
    pub redis: Option<String>,
    pub env: Vec<(String, String)>,
}

impl RegistrySetup {
    pub fn write(&self, port: u16) {
        let text = registry_config(&self.mnt, port, &self.htpasswd, self.redis.as_deref());
        fs::write(&self.config, text).unwrap();
        fs::set_permissions(&self.config, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// Starts the registry as `ids` on `port` (its config written there already); retries
/// on another port if that one was taken meanwhile.
pub fn start_registry(
    setup: &RegistrySetup,
    mut port: u16,
    log: &Path,
    ids: (u32, u32),
) -> (Registry, u16) {
    for attempt in 0..4 {
        if attempt > 0 {
            port = free_port();
            setup.write(port);
        }
        let logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&setup.config)
            .env_remove(CACHE_ENV)
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .uid(ids.0)
            .gid(ids.1)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("docker-registry serve");
        let mut reg = Registry { child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if matches!(http(port, "GET", "/v2/", None), Ok((200, _))) {
                return (reg, port);
            }
            if let Ok(Some(st)) = reg.child.try_wait() {
                let logtext = fs::read_to_string(log).unwrap_or_default();
                if logtext.contains("address already in use") && attempt < 3 {
                    break;
                }
                panic!("docker-registry exited with {st}:\n{logtext}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{port} within 15 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no free port for docker-registry");
}

pub fn setup(mode: Mode) -> Option<World> {
    setup_with(mode, Cache::DropIn)
}

pub fn setup_with(mode: Mode, cache: Cache) -> Option<World> {
    setup_custom(mode, cache, &[], |_| {})
}

/// [`setup_with`], the daemon started with `daemon_args` too, after `prepare` has filled
/// the backing store (as root: `prepare` hands what it creates to the registry's user).
pub fn setup_custom(
    mode: Mode,
    cache: Cache,
    daemon_args: &[&str],
    prepare: impl FnOnce(&Path),
) -> Option<World> {
    let mut shared = Shared::prepare(mode, cache, &[], prepare)?;
    let node = shared.start_node(mode, cache, "", daemon_args);
    Some(World {
        registry: Some(node.registry),
        daemon: Some(node.daemon),
        redis: shared.redis.take(),
        ctx: node.ctx,
        daemon_pid: node.daemon_pid,
        dir: Some(shared.dir),
    })
}

/// What every node of a test's world shares: its directory, the backing store, the
/// images, skopeo's private tree, the registry's password file and its redis.
pub struct Shared {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: PathBuf,
    pub oci: PathBuf,
    pub images: std::collections::BTreeMap<String, crate::ctx::Image>,
    sk: PathBuf,
    sk_ids: (u32, u32),
    reg_ids: (u32, u32),
    skopeo_env: Vec<(String, String)>,
    htpasswd: PathBuf,
    pub redis: Option<RedisServer>,
}

/// One node of a world: a regfs daemon on its own mount of the shared store, and
/// Debian's docker-registry serving that mount.
pub struct NodeProcesses {
    pub registry: Registry,
    pub daemon: Daemon,
    pub ctx: Arc<Ctx>,
    pub daemon_pid: u32,
}

impl Shared {
    /// Checks the prerequisites (and `more` on the PATH), makes the directory, the store
    /// (filled by `prepare`), the images, skopeo's tree, the password file and redis.
    pub fn prepare(
        mode: Mode,
        cache: Cache,
        more: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Option<Shared> {
        let mut needs = Needs::registry_tests(&script())
            .dev_fuse()
            .on_path(&["htpasswd"])
            .on_path(more);
        if cache == Cache::Redis {
            needs = needs.on_path(&["redis-server", "redis-cli"]);
        }
        if !needs.met(
            "the end-to-end registry tests need root, /dev/fuse, python3, docker-registry and skopeo",
        ) {
            return None;
        }
        clean_stale_mounts();
        let reg_ids = registry_user();
        let sk_ids = user("nobody").unwrap_or((65534, 65534));
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().to_path_buf();
        if std::env::var_os("REGFS_E2E_KEEP").is_some() {
            eprintln!("[{mode:?}] REGFS_E2E_KEEP: keeping {}", root.display());
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let store = root.join("store");
        let oci = root.join("oci");
        // The registry owns its store (the mount shows the store's owner and modes).
        mkdir_owned(&store, reg_ids, 0o755);
        prepare(&store);

        let t0 = Instant::now();
        let images = generate_images(&oci);
        eprintln!(
            "[{mode:?}] {} images generated in {:.2} s",
            images.len(),
            t0.elapsed().as_secs_f64()
        );

        // skopeo's private world, owned by the user it runs as.
        let sk = root.join("skopeo");
        let home = sk.join("home");
        for d in [
            sk.clone(),
            home.clone(),
            sk.join("tmp"),
            home.join(".config"),
            home.join(".local/share"),
            home.join(".cache"),
        ] {
            mkdir_owned(&d, sk_ids, 0o755);
        }
        mkdir_owned(&home.join("run"), sk_ids, 0o700);
        let regconf = sk.join("registries.conf");
        fs::write(&regconf, "unqualified-search-registries = []\n").unwrap();
        fs::set_permissions(&regconf, fs::Permissions::from_mode(0o644)).unwrap();
        let p = |p: &Path| p.display().to_string();
        let skopeo_env = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), p(&home)),
            ("TMPDIR".into(), p(&sk.join("tmp"))),
            ("XDG_CONFIG_HOME".into(), p(&home.join(".config"))),
            ("XDG_DATA_HOME".into(), p(&home.join(".local/share"))),
            ("XDG_CACHE_HOME".into(), p(&home.join(".cache"))),
            ("XDG_RUNTIME_DIR".into(), p(&home.join("run"))),
            ("CONTAINERS_REGISTRIES_CONF".into(), p(&regconf)),
            ("REGISTRY_AUTH_FILE".into(), p(&home.join("auth.json"))),
            ("NO_PROXY".into(), "*".into()),
            ("no_proxy".into(), "*".into()),
        ];
        let redis = (cache == Cache::Redis).then(|| RedisServer::start(&root.join("redis")));
        let htpasswd = root.join("htpasswd");
        write_htpasswd(&htpasswd);
        Some(Shared {
            dir,
            root,
            store,
            oci,
            images,
            sk,
            sk_ids,
            reg_ids,
            skopeo_env,
            htpasswd,
            redis,
        })
    }

    /// Starts a daemon at `mnt<name>` (state `state<name>`, log `regfs<name>.log`) with
    /// `daemon_args`, and a registry on it (`registry<name>.yml`, `registry<name>.log`).
    pub fn start_node(
        &self,
        mode: Mode,
        cache: Cache,
        name: &str,
        daemon_args: &[&str],
    ) -> NodeProcesses {
        let root = &self.root;
        let mnt = root.join(format!("mnt{name}"));
        let state = root.join(format!("state{name}"));
        fs::create_dir(&mnt).unwrap();
        let daemon_log = root.join(format!("regfs{name}.log"));
        let registry_log = root.join(format!("registry{name}.log"));
        let reg_setup = RegistrySetup {
            config: root.join(format!("registry{name}.yml")),
            mnt: mnt.clone(),
            htpasswd: self.htpasswd.clone(),
            redis: self.redis.as_ref().map(|r| r.addr()),
            env: match cache {
                Cache::DropIn => drop_in_environment(),
                Cache::InMemory => vec![],
                Cache::Redis => vec![(CACHE_ENV.into(), "redis".into())],
            },
        };
        let port = free_port();
        reg_setup.write(port);
        let mut extra: Vec<std::ffi::OsString> =
            vec!["--registry-config".into(), reg_setup.config.clone().into()];
        if cache == Cache::InMemory {
            // To show the filesystem's own refusal, GC must run despite the unsafe cache.
            extra.push("--allow-unsafe-cache".into());
        }
        extra.extend(daemon_args.iter().map(Into::into));
        let daemon = start_daemon(&self.store, &mnt, &state, &daemon_log, mode, &extra);
        let daemon_pid = daemon.child.id();
        let (registry, port) = start_registry(&reg_setup, port, &registry_log, self.reg_ids);
        eprintln!(
            "[{mode:?}] regfs{name} pid {daemon_pid}, docker-registry pid {} (uid {}) on 127.0.0.1:{port}",
            registry.child.id(),
            self.reg_ids.0
        );
        // Each node's pulls apart: two nodes' pull counters both start at 0.
        let pulls = self.sk.join(format!("pulls{name}"));
        mkdir_owned(&pulls, self.sk_ids, 0o755);
        let ctx = Ctx {
            store: self.store.clone(),
            mnt,
            state,
            oci: self.oci.clone(),
            pulls,
            skopeo_tmp: self.sk.join("tmp"),
            skopeo_env: self.skopeo_env.clone(),
            skopeo_ids: self.sk_ids,
            port,
            images: self.images.clone(),
            registry_log,
            daemon_log,
            counter: AtomicU64::new(0),
        };
        NodeProcesses {
            registry,
            daemon,
            ctx: Arc::new(ctx),
            daemon_pid,
        }
    }
}
