//! The simulated Xen host: what netbackd is tested against where no hypervisor runs.
//!
//! A sim root directory holds, per domain, guest RAM, a grant table and an event-channel
//! table as shared files (see `docs/sim-abi.md`), and runs Xen's real `xenstored` on a unix
//! socket, made to run without a hypervisor by a small LD_PRELOAD shim of the project's
//! (`xen/shim/xenstored-shim.c`). Any process (the daemon, a simulated guest, a Python
//! test) can attach to the same root.
pub mod evtchn;
pub mod grant;
pub mod shm;
pub mod toolstack;

use crate::xenstore::{Access, Perm, Tx, XenStore};
use crate::XenError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use evtchn::SimEvtchn;
pub use grant::{DomainMem, DomainTable, SimGrant};

/// The xenstored shim, built by build.rs and written into each sim root at start.
static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libnbd_xsshim.so"));

/// Xen 4.17's C xenstored as Debian installs it.
pub const XENSTORED: &str = "/usr/lib/xen-4.17/bin/xenstored";

/// Paths inside a sim root.
#[derive(Clone, Debug)]
pub struct SimLayout {
    root: PathBuf,
}

impl SimLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SimLayout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dom_dir(&self, domid: u16) -> PathBuf {
        self.root.join(format!("dom{domid}"))
    }
    pub fn xenstored_dir(&self) -> PathBuf {
        self.root.join("xenstored")
    }
    /// The xenstored socket (what `XENSTORED_PATH` must name).
    pub fn xenstore_socket(&self) -> PathBuf {
        self.xenstored_dir().join("socket")
    }
    fn owner_file(&self) -> PathBuf {
        self.root.join("owner.pid")
    }
    fn xenstored_pid_file(&self) -> PathBuf {
        self.root.join("xenstored.pid")
    }
}

/// Options for starting a sim host.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Directory that holds sim roots (default /dev/shm: guest RAM lives in shared memory).
    pub parent: PathBuf,
    /// Exact root to use; default `<parent>/netbackd-sim-<pid>-<n>`.
    pub root: Option<PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        let parent = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        SimOptions { parent, root: None }
    }
}

/// A running simulated host. Dropping it stops xenstored and removes the root: no process,
/// socket or shared-memory file is left behind.
pub struct SimHost {
    layout: SimLayout,
    xenstored: Option<Child>,
    store: Option<XenStore>,
    domains: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    /// Closes dead processes' event channels, as a dom0 kernel does at their exit.
    reaper: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

/// How often the sim host looks for processes gone with event channels bound.
const REAP_EVERY: Duration = Duration::from_millis(50);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Name prefix of the roots `SimHost::start` creates (`netbackd-sim-<pid>-<n>`).
const ROOT_PREFIX: &str = "netbackd-sim-";
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The start time of process `pid` (field 22 of /proc/<pid>/stat, clock ticks after boot):
/// with the pid it names a process uniquely (pids are reused).
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by (pid, start time) still runs.
pub(crate) fn owner_alive(pid: i32, start: Option<u64>) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let exists = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    exists && (start.is_none() || start_time(pid) == start)
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `owner.pid`: "<pid> <start time>".
fn read_owner(p: &Path) -> Option<(i32, Option<u64>)> {
    let s = std::fs::read_to_string(p).ok()?;
    let mut it = s.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    Some((pid, it.next().and_then(|t| t.parse().ok())))
}

/// The pid in a default root's name (`netbackd-sim-<pid>-<n>`).
fn pid_from_name(root: &Path) -> Option<i32> {
    let name = root.file_name()?.to_str()?.strip_prefix(ROOT_PREFIX)?;
    name.split('-').next()?.parse().ok()
}

/// Removes a sim root left by a process that died: kills its xenstored if still running,
/// then deletes the directory. Returns true if it was stale (and is gone). A root whose
/// owner file is not written yet (another process is creating it) is judged by the pid in
/// its name.
fn reap_if_stale(root: &Path) -> bool {
    let layout = SimLayout::new(root);
    let owner = read_owner(&layout.owner_file()).or_else(|| pid_from_name(root).map(|p| (p, None)));
    if let Some((pid, start)) = owner {
        if owner_alive(pid, start) {
            return false;
        }
    }
    if let Some(x) = read_pid(&layout.xenstored_pid_file()) {
        let is_ours = std::fs::read(format!("/proc/{x}/environ"))
            .map(|env| {
                let needle = format!("XENSTORED_RUNDIR={}", layout.xenstored_dir().display());
                env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            })
            .unwrap_or(false);
        if is_ours {
            // SAFETY: signalling a process we identified as this root's xenstored.
            unsafe { libc::kill(x, libc::SIGKILL) };
        }
    }
    std::fs::remove_dir_all(root).is_ok()
}

/// Permissions libxl gives a guest's xenstore directories: owned by dom0, readable by
/// the guest (`roperm`), or owned by the guest (`rwperm`).
fn roperm(domid: u16) -> [Perm; 2] {
    [Perm::new(0, Access::None), Perm::new(domid, Access::Read)]
}
fn rwperm(domid: u16) -> [Perm; 1] {
    [Perm::new(domid, Access::None)]
}

impl SimHost {
    /// Starts a fresh sim host: removes stale roots of dead processes, creates the root,
    /// starts xenstored and creates dom0's xenstore entries.
    pub fn start(opts: SimOptions) -> Result<SimHost, XenError> {
        if let Ok(rd) = std::fs::read_dir(&opts.parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(ROOT_PREFIX) {
                    reap_if_stale(&e.path());
                }
            }
        }
        let root = opts.root.clone().unwrap_or_else(|| {
            opts.parent.join(format!(
                "{ROOT_PREFIX}{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ))
        });
        if root.exists() && !reap_if_stale(&root) {
            return Err(XenError::Sim(format!(
                "{} is in use by a running process",
                root.display()
            )));
        }
        if !Path::new(XENSTORED).exists() {
            return Err(XenError::Sim(format!(
                "{XENSTORED} not found: install xen-utils-4.17 (deploy/bootstrap)"
            )));
        }
        let layout = SimLayout::new(&root);
        let sock_len = layout.xenstore_socket().as_os_str().len();
        if sock_len > MAX_SOCKET_PATH {
            return Err(XenError::Invalid(format!(
                "sim root {} is too long: its xenstore socket path needs {sock_len} bytes, a \
                 unix socket allows {MAX_SOCKET_PATH}",
                root.display()
            )));
        }
        let io = |what: &str, e| XenError::io(format!("{what} in {}", root.display()), e);
        // create_dir (not _all): two hosts can never share a root.
        std::fs::create_dir(&root).map_err(|e| io("mkdir", e))?;
        let mut host = SimHost {
            layout: layout.clone(),
            xenstored: None,
            store: None,
            domains: Default::default(),
            reaper: None,
        };
        let me = std::process::id() as i32;
        let owner = match start_time(me) {
            Some(t) => format!("{me} {t}\n"),
            None => format!("{me}\n"),
        };
        std::fs::write(layout.owner_file(), owner).map_err(|e| io("owner.pid", e))?;
        std::fs::create_dir(layout.xenstored_dir()).map_err(|e| io("mkdir", e))?;
        let shim = root.join("libnbd_xsshim.so");
        std::fs::write(&shim, SHIM).map_err(|e| io("shim", e))?;
        // dom0's store event channel and ring page, which xenstored reads at start.
        std::fs::write(layout.xenstored_dir().join("xsd_port"), "1")
            .map_err(|e| io("xsd_port", e))?;
        std::fs::write(layout.xenstored_dir().join("xsd_kva"), vec![0u8; 4096])
            .map_err(|e| io("xsd_kva", e))?;
        let log = std::fs::File::create(root.join("xenstored.log")).map_err(|e| io("log", e))?;
        let child = Command::new(XENSTORED)
            .args(["--no-fork", "--pid-file"])
            .arg(layout.xenstored_pid_file())
            .env("XENSTORED_RUNDIR", layout.xenstored_dir())
            // xenstored binds XENSTORED_PATH when set: never let it inherit one (the
            // caller's, or one another thread's `XenStore::open_at` has set for a moment).
            .env("XENSTORED_PATH", layout.xenstore_socket())
            .env("NBD_SIM_XSD_DIR", layout.xenstored_dir())
            .env("LD_PRELOAD", &shim)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io("log", e))?)
            .stderr(log)
            .spawn()
            .map_err(|e| io("spawn xenstored", e))?;
        host.xenstored = Some(child);
        let sock = layout.xenstore_socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            if sock.exists() {
                if let Ok(s) = XenStore::open_at(&sock.to_string_lossy()) {
                    break s;
                }
            }
            if let Some(Ok(Some(st))) = host.xenstored.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(root.join("xenstored.log")).unwrap_or_default();
                return Err(XenError::Sim(format!(
                    "xenstored exited ({st}): {}",
                    log.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(XenError::Sim(
                    "xenstored did not open its socket within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // What xencommons writes for dom0 on a real host.
        store.write(Tx::NONE, "/local/domain/0/name", "Domain-0")?;
        store.write(Tx::NONE, "/local/domain/0/domid", "0")?;
        host.store = Some(store);
        let dom0 = grant::create_domain(&host.layout, 0, 16, 256)?;
        dom0.set_state(evtchn::DOM_RUNNING);
        host.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (doms, layout, st) = (host.domains.clone(), host.layout.clone(), stop.clone());
        let t = std::thread::Builder::new()
            .name("sim-reaper".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let list = doms.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    for d in list {
                        evtchn::reap_dead(&layout, d);
                    }
                    std::thread::sleep(REAP_EVERY);
                }
            })
            .map_err(|e| XenError::io("spawn the reaper thread", e))?;
        host.reaper = Some((stop, t));
        Ok(host)
    }

    pub fn layout(&self) -> &SimLayout {
        &self.layout
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The xenstored socket path (for `XENSTORED_PATH` or `XenStore::open_at`).
    pub fn xenstore_path(&self) -> String {
        self.layout.xenstore_socket().to_string_lossy().into_owned()
    }

    /// An admin (dom0) connection to this host's xenstored.
    pub fn store(&self) -> &XenStore {
        self.store.as_ref().expect("set in start")
    }

    /// A new xenstore connection (e.g. for another thread's watches).
    pub fn connect(&self) -> Result<XenStore, XenError> {
        XenStore::open_at(&self.xenstore_path())
    }

    /// The domains that exist, dom0 first.
    pub fn domains(&self) -> Vec<u16> {
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Creates guest `domid` as a toolstack (libxl) does: `frames` pages of RAM and
    /// `grants` grant entries; a store event channel (an unbound port of the guest for
    /// dom0, in `store/port`); `/local/domain/<domid>` with libxl's nodes and permissions
    /// (the directory and `device`, `control`, `memory`, `cpu` owned by dom0 and readable
    /// by the guest; `data`, `drivers`, `feature`, `attr`, `error`, `control/shutdown`,
    /// `device/suspend/event-channel` owned by the guest); then `XS_INTRODUCE`, which
    /// fires `@introduceDomain`.
    pub fn add_domain(
        &self,
        domid: u16,
        name: &str,
        frames: u32,
        grants: u32,
    ) -> Result<(), XenError> {
        if domid == 0 || domid >= 0x7FF0 {
            return Err(XenError::Invalid(format!(
                "domid {domid} is not a guest domid"
            )));
        }
        if self.layout.dom_dir(domid).exists() {
            return Err(XenError::Invalid(format!("domain {domid} exists")));
        }
        let ports = grant::create_domain(&self.layout, domid, frames, grants)?;
        ports.set_state(evtchn::DOM_RUNNING);
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(domid);
        if let Err(e) = self.register_domain(domid, name, frames) {
            let _ = self.remove_domain(domid);
            return Err(e);
        }
        Ok(())
    }

    fn register_domain(&self, domid: u16, name: &str, frames: u32) -> Result<(), XenError> {
        let store_port = SimEvtchn::new(self.layout.clone(), domid)?.alloc_unbound(0)?;
        let s = self.store();
        let base = format!("/local/domain/{domid}");
        let kib = (u64::from(frames) * 4).to_string();
        s.transaction(10, |t| {
            s.rm(t, &base)?;
            s.mkdir(t, &base)?;
            s.set_perms(t, &base, &roperm(domid))?;
            for d in ["cpu", "memory", "device", "control"] {
                let p = format!("{base}/{d}");
                s.mkdir(t, &p)?;
                s.set_perms(t, &p, &roperm(domid))?;
            }
            for d in [
                "control/shutdown",
                "device/suspend/event-channel",
                "data",
                "drivers",
                "feature",
                "attr",
                "error",
            ] {
                let p = format!("{base}/{d}");
                s.mkdir(t, &p)?;
                s.set_perms(t, &p, &rwperm(domid))?;
            }
            for (k, v) in [
                ("name", name),
                ("domid", &domid.to_string()),
                ("memory/static-max", &kib),
                ("memory/target", &kib),
                ("store/port", &store_port.to_string()),
                ("control/platform-feature-multiprocessor-suspend", "1"),
                ("control/platform-feature-xs_reset_watches", "1"),
            ] {
                s.write(t, &format!("{base}/{k}"), v)?;
            }
            Ok(())
        })?;
        s.introduce_domain(domid, 0, store_port)
    }

    /// Destroys a guest as `xl destroy` does: removes its devices' backend directories
    /// (`/local/domain/0/backend/*/<domid>`) and its `/local/domain/<domid>`, then the
    /// domain itself: grant operations on it fail with bad_domain from then on, peer event
    /// channels bound to it go back to unbound, xenstored forgets it (`@releaseDomain`),
    /// and its RAM, grant table and port table are deleted.
    pub fn remove_domain(&self, domid: u16) -> Result<(), XenError> {
        if domid == 0 {
            return Err(XenError::Invalid("dom0 cannot be removed".into()));
        }
        if !self.layout.dom_dir(domid).exists() {
            return Err(XenError::Invalid(format!("no domain {domid}")));
        }
        let s = self.store();
        let types = s
            .directory(Tx::NONE, "/local/domain/0/backend")?
            .unwrap_or_default();
        for ty in types {
            s.rm(Tx::NONE, &format!("/local/domain/0/backend/{ty}/{domid}"))?;
        }
        s.rm(Tx::NONE, &format!("/local/domain/{domid}"))?;
        if let Ok(t) = evtchn::PortTable::open(&self.layout, domid) {
            t.set_state(evtchn::DOM_DESTROYED);
        }
        evtchn::close_domain(&self.layout, domid);
        if s.is_domain_introduced(domid) {
            s.release_domain(domid)?;
        }
        let dir = self.layout.dom_dir(domid);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| XenError::io(format!("remove {}", dir.display()), e))?;
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| *d != domid);
        Ok(())
    }

    /// The backend domain's grant operations on this host.
    pub fn grants(&self, local_dom: u16) -> SimGrant {
        SimGrant::new(DomainTable::new(self.layout.clone()), local_dom)
    }

    /// Event channels of `local_dom` on this host.
    pub fn evtchn(&self, local_dom: u16) -> Result<SimEvtchn, XenError> {
        SimEvtchn::new(self.layout.clone(), local_dom)
    }

    /// Stops xenstored and removes everything (also done on drop).
    pub fn stop(mut self) -> Result<(), XenError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), XenError> {
        if let Some((stop, t)) = self.reaper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        self.store = None;
        if let Some(mut c) = self.xenstored.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.layout.root().exists() {
            std::fs::remove_dir_all(self.layout.root())
                .map_err(|e| XenError::io(format!("remove {}", self.layout.root().display()), e))?;
        }
        Ok(())
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
