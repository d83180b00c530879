use crate::error::{rte_errno, strerror, PmdError};
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The initialised DPDK Environment Abstraction Layer. DPDK permits one initialisation
/// per process; dropping this calls `rte_eal_cleanup`, after which DPDK can't be used again
/// in the process. Drop every port, mempool and mbuf first.
pub struct Eal {
    runtime_dir: Option<std::path::PathBuf>,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Free 2 MiB hugepages exist and a hugetlbfs is mounted.
fn hugepages_available() -> bool {
    let free = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
        })
        .unwrap_or(false);
    free > 0 && mounted
}

/// EAL's runtime directory (/var/run/dpdk/<file-prefix>), valid after init.
fn runtime_dir() -> Option<std::path::PathBuf> {
    // SAFETY: returns a pointer to EAL's static buffer (empty before init); copied at once.
    let p = unsafe { dpdk_sys::rte_eal_get_runtime_dir() };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated static buffer.
    let s = unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned();
    (!s.is_empty()).then(|| s.into())
}

impl Eal {
    /// Initialises EAL with `args` exactly as on a DPDK command line (without the program
    /// name), e.g. `["--no-pci", "--no-huge", "-m", "256", "--file-prefix", "x"]`.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal, PmdError> {
        if INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(PmdError::EalAlreadyInitialised);
        }
        let mut owned = vec![CString::new("netbackd").expect("no NUL")];
        for a in args {
            match CString::new(a.as_ref()) {
                Ok(c) => owned.push(c),
                Err(_) => {
                    INITIALISED.store(false, Ordering::SeqCst);
                    return Err(PmdError::InvalidArgument(format!(
                        "EAL argument {:?} contains a NUL byte",
                        a.as_ref()
                    )));
                }
            }
        }
        // EAL may permute argv; give it a private array of pointers into `owned`.
        let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the call
        // (EAL copies what it keeps); INITIALISED guarantees a single call per process.
        let ret = unsafe { dpdk_sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if ret < 0 {
            let code = rte_errno();
            if let Some(d) = runtime_dir() {
                let _ = std::fs::remove_dir(d);
            }
            // EAL can't be retried after a failed init either (it says "already called").
            return Err(PmdError::EalInit {
                code,
                msg: strerror(code),
            });
        }
        Ok(Eal {
            runtime_dir: runtime_dir(),
            _not_send: std::marker::PhantomData,
        })
    }

    /// EAL arguments that work on this machine without further set-up: no PCI scan, the
    /// given file prefix (unique per process), and 2 MiB hugepages with `--in-memory` when
    /// some are reserved and hugetlbfs is mounted, otherwise `--no-huge -m <mb>` with
    /// `--no-shconf` (legacy memory, as in a PV dom0, which has no hugepages).
    pub fn default_args(file_prefix: &str, mb: u32) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--no-pci".into(),
            "--file-prefix".into(),
            file_prefix.into(),
        ];
        if hugepages_available() {
            v.push("--in-memory".into());
        } else {
            v.extend([
                "--no-huge".into(),
                "-m".into(),
                mb.to_string(),
                "--no-shconf".into(),
            ]);
        }
        v
    }

    /// Whether EAL has been initialised in this process.
    pub fn is_initialised() -> bool {
        INITIALISED.load(Ordering::SeqCst)
    }

    /// EAL's runtime directory, removed on drop when empty.
    pub fn runtime_dir(&self) -> Option<&std::path::Path> {
        self.runtime_dir.as_deref()
    }

    /// Number of lcores EAL was given (`-l` / `--lcores`).
    pub fn lcore_count(&self) -> u32 {
        // SAFETY: EAL is initialised (self exists).
        unsafe { dpdk_sys::rte_lcore_count() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: EAL was initialised by this value, on this thread (Eal is !Send), and is
        // cleaned up once; callers drop ports and pools first (documented).
        unsafe { dpdk_sys::rte_eal_cleanup() };
        // EAL leaves its runtime directory behind with its sockets (telemetry, and the
        // multi-process channel without --no-shconf). The directory is this process's own
        // (unique --file-prefix): remove the sockets, then the directory if now empty.
        if let Some(d) = &self.runtime_dir {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with("dpdk_telemetry") || name.starts_with("mp_socket") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}
