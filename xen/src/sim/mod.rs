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
    domains: std::sync::Mutex<Vec<u16>>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Removes a sim root left by a process that died: kills its xenstored if still running,
/// then deletes the directory. Returns true if it was stale (and is gone).
fn reap_if_stale(root: &Path) -> bool {
    let layout = SimLayout::new(root);
    if let Some(owner) = read_pid(&layout.owner_file()) {
        if pid_alive(owner) {
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

impl SimHost {
    /// Starts a fresh sim host: removes stale roots of dead processes, creates the root,
    /// starts xenstored and creates dom0's xenstore entries.
    pub fn start(opts: SimOptions) -> Result<SimHost, XenError> {
        if let Ok(rd) = std::fs::read_dir(&opts.parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("netbackd-sim-") {
                    reap_if_stale(&e.path());
                }
            }
        }
        let root = opts.root.clone().unwrap_or_else(|| {
            opts.parent.join(format!(
                "netbackd-sim-{}-{}",
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
        let mut host = SimHost {
            layout: layout.clone(),
            xenstored: None,
            store: None,
            domains: std::sync::Mutex::new(Vec::new()),
        };
        let io = |what: &str, e| XenError::io(format!("{what} in {}", root.display()), e);
        // Another process's start may be reaping stale roots right now: the root must never
        // be visible without its owner. Build it under a hidden name (never reaped), write
        // owner.pid, then rename it into place (atomic).
        let staging = root.with_file_name(format!(
            ".{}.staging",
            root.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| io("mkdir", e))?;
        std::fs::write(staging.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| io("owner.pid", e))?;
        std::fs::rename(&staging, &root).map_err(|e| io("rename staging root", e))?;
        std::fs::create_dir_all(layout.xenstored_dir()).map_err(|e| io("mkdir", e))?;
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
            std::thread::sleep(Duration::from_millis(5));
        };
        store.write(Tx::NONE, "/local/domain/0/name", "Domain-0")?;
        store.write(Tx::NONE, "/local/domain/0/domid", "0")?;
        host.store = Some(store);
        host.create_domain_files(0, 16, 256)?;
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

    fn create_domain_files(&self, domid: u16, frames: u32, grants: u32) -> Result<(), XenError> {
        grant::create_domain(&self.layout, domid, frames, grants)?;
        evtchn::PortTable::create(&self.layout, domid)?;
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(domid);
        Ok(())
    }

    /// Creates guest `domid` with `frames` pages of RAM and `grants` grant entries, and
    /// its `/local/domain/<domid>` directory owned by the domain (as the toolstack does).
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
        self.create_domain_files(domid, frames, grants)?;
        let s = self.store();
        let base = format!("/local/domain/{domid}");
        s.transaction(10, |t| {
            s.mkdir(t, &base)?;
            s.set_perms(
                t,
                &base,
                &[Perm::new(domid, Access::None), Perm::new(0, Access::Read)],
            )?;
            s.write(t, &format!("{base}/name"), name)?;
            s.write(t, &format!("{base}/domid"), &domid.to_string())?;
            s.mkdir(t, &format!("{base}/device"))?;
            Ok(())
        })?;
        Ok(())
    }

    /// Destroys a guest: its xenstore directory and its memory.
    pub fn remove_domain(&self, domid: u16) -> Result<(), XenError> {
        self.store()
            .rm(Tx::NONE, &format!("/local/domain/{domid}"))?;
        let _ = std::fs::remove_dir_all(self.layout.dom_dir(domid));
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
        self.store = None;
        if let Some(mut c) = self.xenstored.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
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
