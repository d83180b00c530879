//! xenstore through Xen's own libxenstore (the real protocol, permissions, watches and
//! transactions), against the daemon of a real dom0 or the simulated host's xenstored.
use crate::XenError;
use std::ffi::{c_char, c_void, CStr, CString};
use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;
use xen_sys as sys;

/// A connection to xenstored.
pub struct XenStore {
    h: NonNull<sys::xs_handle>,
    path: String,
}

// SAFETY: libxenstore handles are thread-safe (it serialises requests internally with
// pthread mutexes, built with pthread support in Debian).
unsafe impl Send for XenStore {}
// SAFETY: as above.
unsafe impl Sync for XenStore {}

/// A transaction id; `Tx::NONE` is outside any transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(u32);
impl Tx {
    pub const NONE: Tx = Tx(0);
}

/// Access of one domain to a node, as `xs_permissions` encodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

/// A permission entry; the first entry of a node's list names its owner (and the access of
/// every domain not listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub domid: u16,
    pub access: Access,
}

impl Perm {
    pub fn new(domid: u16, access: Access) -> Perm {
        Perm { domid, access }
    }
    fn to_c(self) -> sys::xs_permissions {
        let perms = match self.access {
            Access::None => sys::XS_PERM_NONE,
            Access::Read => sys::XS_PERM_READ,
            Access::Write => sys::XS_PERM_WRITE,
            Access::Both => sys::XS_PERM_READ | sys::XS_PERM_WRITE,
        };
        sys::xs_permissions {
            id: u32::from(self.domid),
            perms,
        }
    }
    fn from_c(p: &sys::xs_permissions) -> Perm {
        let r = p.perms & sys::XS_PERM_READ != 0;
        let w = p.perms & sys::XS_PERM_WRITE != 0;
        Perm {
            domid: p.id as u16,
            access: match (r, w) {
                (false, false) => Access::None,
                (true, false) => Access::Read,
                (false, true) => Access::Write,
                (true, true) => Access::Both,
            },
        }
    }
}

/// A fired watch: the path that changed and the token given to `watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// libxenstore reads the socket path from XENSTORED_PATH at open; serialise opens that set
/// it so connections to different daemons (tests with several sim hosts) can't mix.
static OPEN_LOCK: Mutex<()> = Mutex::new(());

fn cstr(s: &str) -> Result<CString, XenError> {
    CString::new(s).map_err(|_| XenError::Invalid(format!("NUL byte in {s:?}")))
}

impl XenStore {
    /// Connects to the default daemon: `XENSTORED_PATH` if set, else the host's socket.
    pub fn open() -> Result<XenStore, XenError> {
        let path =
            std::env::var("XENSTORED_PATH").unwrap_or_else(|_| "/var/run/xenstored/socket".into());
        Self::open_at(&path)
    }

    /// Connects to the xenstored listening on the unix socket `path`.
    ///
    /// libxenstore only takes the path from the environment, so this sets `XENSTORED_PATH`
    /// for the duration of the `xs_open` call (serialised with other opens) and restores
    /// it. Processes spawned meanwhile by other threads could inherit it: give children
    /// that use xenstore `XENSTORED_PATH` explicitly (`Command::env`).
    pub fn open_at(path: &str) -> Result<XenStore, XenError> {
        let _g = OPEN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::env::var_os("XENSTORED_PATH");
        std::env::set_var("XENSTORED_PATH", path);
        // SAFETY: plain library call; XS_OPEN_SOCKETONLY keeps it off /dev/xen/xenbus.
        let h = unsafe { sys::xs_open(sys::XS_OPEN_SOCKETONLY as _) };
        let err = io::Error::last_os_error();
        match old {
            Some(v) => std::env::set_var("XENSTORED_PATH", v),
            None => std::env::remove_var("XENSTORED_PATH"),
        }
        let h = NonNull::new(h).ok_or_else(|| XenError::StoreConnect {
            path: path.into(),
            source: err,
        })?;
        Ok(XenStore {
            h,
            path: path.into(),
        })
    }

    /// Connects as a real dom0 process does: to `socket` when given, else to xenstored's
    /// default socket when it exists, else through the kernel's `/dev/xen/xenbus` (a
    /// xenstored in another domain, or one that only serves the device).
    pub fn open_host(socket: Option<&str>) -> Result<XenStore, XenError> {
        const DEFAULT: &str = "/var/run/xenstored/socket";
        const DEVICE: &str = "/dev/xen/xenbus";
        if let Some(s) = socket {
            return Self::open_at(s);
        }
        if std::path::Path::new(DEFAULT).exists() {
            return Self::open_at(DEFAULT);
        }
        let _g = OPEN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: plain library call; flags 0 lets libxenstore use the xenbus device.
        let h = unsafe { sys::xs_open(0) };
        let err = io::Error::last_os_error();
        let h = NonNull::new(h).ok_or_else(|| XenError::StoreConnect {
            path: format!("{DEFAULT} or {DEVICE}"),
            source: err,
        })?;
        Ok(XenStore {
            h,
            path: DEVICE.into(),
        })
    }

    pub fn socket_path(&self) -> &str {
        &self.path
    }

    fn err(op: &'static str, path: &str) -> XenError {
        XenError::Store {
            op,
            path: path.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// Reads a node; `Ok(None)` if it does not exist.
    pub fn read(&self, t: Tx, path: &str) -> Result<Option<String>, XenError> {
        let p = cstr(path)?;
        let mut len = 0u32;
        // SAFETY: valid handle and C string; the result is malloc'd by libxenstore.
        let v = unsafe { sys::xs_read(self.h.as_ptr(), t.0, p.as_ptr(), &mut len) };
        if v.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(XenError::Store {
                op: "read",
                path: path.into(),
                source: e,
            });
        }
        // SAFETY: v points to len bytes (NUL-terminated extra) that we now own.
        let s = unsafe {
            let bytes = std::slice::from_raw_parts(v as *const u8, len as usize);
            let s = String::from_utf8_lossy(bytes).into_owned();
            libc::free(v);
            s
        };
        Ok(Some(s))
    }

    pub fn write(&self, t: Tx, path: &str, value: &str) -> Result<(), XenError> {
        let p = cstr(path)?;
        // SAFETY: valid handle, C string and byte buffer of the given length.
        let ok = unsafe {
            sys::xs_write(
                self.h.as_ptr(),
                t.0,
                p.as_ptr(),
                value.as_ptr() as *const c_void,
                value.len() as u32,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(Self::err("write", path))
        }
    }

    pub fn mkdir(&self, t: Tx, path: &str) -> Result<(), XenError> {
        let p = cstr(path)?;
        // SAFETY: valid handle and C string.
        if unsafe { sys::xs_mkdir(self.h.as_ptr(), t.0, p.as_ptr()) } {
            Ok(())
        } else {
            Err(Self::err("mkdir", path))
        }
    }

    /// Removes a node and everything below it; removing a missing node is not an error.
    pub fn rm(&self, t: Tx, path: &str) -> Result<(), XenError> {
        let p = cstr(path)?;
        // SAFETY: valid handle and C string.
        if unsafe { sys::xs_rm(self.h.as_ptr(), t.0, p.as_ptr()) } {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        Err(XenError::Store {
            op: "rm",
            path: path.into(),
            source: e,
        })
    }

    /// Child names of a node; `Ok(None)` if it does not exist.
    pub fn directory(&self, t: Tx, path: &str) -> Result<Option<Vec<String>>, XenError> {
        let p = cstr(path)?;
        let mut n = 0u32;
        // SAFETY: valid handle and C string; result is one malloc'd block of n pointers.
        let v = unsafe { sys::xs_directory(self.h.as_ptr(), t.0, p.as_ptr(), &mut n) };
        if v.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(XenError::Store {
                op: "directory",
                path: path.into(),
                source: e,
            });
        }
        // SAFETY: n valid C strings inside the block, freed as one allocation.
        let out = unsafe {
            let out = (0..n as usize)
                .map(|i| CStr::from_ptr(*v.add(i)).to_string_lossy().into_owned())
                .collect();
            libc::free(v as *mut c_void);
            out
        };
        Ok(Some(out))
    }

    pub fn set_perms(&self, t: Tx, path: &str, perms: &[Perm]) -> Result<(), XenError> {
        let p = cstr(path)?;
        let mut c: Vec<sys::xs_permissions> = perms.iter().map(|p| p.to_c()).collect();
        // SAFETY: valid handle, C string and array of c.len() entries.
        if unsafe {
            sys::xs_set_permissions(
                self.h.as_ptr(),
                t.0,
                p.as_ptr(),
                c.as_mut_ptr(),
                c.len() as u32,
            )
        } {
            Ok(())
        } else {
            Err(Self::err("set_perms", path))
        }
    }

    pub fn get_perms(&self, t: Tx, path: &str) -> Result<Vec<Perm>, XenError> {
        let p = cstr(path)?;
        let mut n = 0u32;
        // SAFETY: valid handle and C string; result malloc'd array of n entries.
        let v = unsafe { sys::xs_get_permissions(self.h.as_ptr(), t.0, p.as_ptr(), &mut n) };
        if v.is_null() {
            return Err(Self::err("get_perms", path));
        }
        // SAFETY: n entries, freed once.
        let out = unsafe {
            let out = std::slice::from_raw_parts(v, n as usize)
                .iter()
                .map(Perm::from_c)
                .collect();
            libc::free(v as *mut c_void);
            out
        };
        Ok(out)
    }

    /// Watches `path` (and below); events carry `token`. xenstored also fires one event at
    /// once for the current state.
    pub fn watch(&self, path: &str, token: &str) -> Result<(), XenError> {
        let (p, t) = (cstr(path)?, cstr(token)?);
        // SAFETY: valid handle and C strings.
        if unsafe { sys::xs_watch(self.h.as_ptr(), p.as_ptr(), t.as_ptr()) } {
            Ok(())
        } else {
            Err(Self::err("watch", path))
        }
    }

    pub fn unwatch(&self, path: &str, token: &str) -> Result<(), XenError> {
        let (p, t) = (cstr(path)?, cstr(token)?);
        // SAFETY: valid handle and C strings.
        if unsafe { sys::xs_unwatch(self.h.as_ptr(), p.as_ptr(), t.as_ptr()) } {
            Ok(())
        } else {
            Err(Self::err("unwatch", path))
        }
    }

    fn take_event(v: *mut *mut c_char) -> WatchEvent {
        // SAFETY: libxenstore returns one malloc'd block holding [path, token] pointers.
        unsafe {
            let path = CStr::from_ptr(*v.add(sys::xs_watch_type_XS_WATCH_PATH as usize))
                .to_string_lossy()
                .into_owned();
            let token = CStr::from_ptr(*v.add(sys::xs_watch_type_XS_WATCH_TOKEN as usize))
                .to_string_lossy()
                .into_owned();
            libc::free(v as *mut c_void);
            WatchEvent { path, token }
        }
    }

    /// The next watch event if one is queued, else None (never blocks).
    pub fn try_read_watch(&self) -> Option<WatchEvent> {
        // SAFETY: valid handle; non-blocking check.
        let v = unsafe { sys::xs_check_watch(self.h.as_ptr()) };
        (!v.is_null()).then(|| Self::take_event(v))
    }

    /// Blocks until a watch event arrives. An error means the connection is broken.
    pub fn read_watch(&self) -> Result<WatchEvent, XenError> {
        let mut n = 0u32;
        // SAFETY: valid handle; blocks in libxenstore until an event is queued or the
        // connection fails (NULL).
        let v = unsafe { sys::xs_read_watch(self.h.as_ptr(), &mut n) };
        if v.is_null() {
            return Err(Self::err("read_watch", ""));
        }
        Ok(Self::take_event(v))
    }

    /// Waits up to `timeout` for a watch event.
    pub fn read_watch_timeout(&self, timeout: Duration) -> Option<WatchEvent> {
        if let Some(e) = self.try_read_watch() {
            return Some(e);
        }
        // SAFETY: valid handle.
        let fd = unsafe { sys::xs_fileno(self.h.as_ptr()) };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        self.try_read_watch()
    }

    /// The fd that becomes readable when a watch event may be queued.
    pub fn watch_fd(&self) -> i32 {
        // SAFETY: valid handle.
        unsafe { sys::xs_fileno(self.h.as_ptr()) }
    }

    pub fn transaction_start(&self) -> Result<Tx, XenError> {
        // SAFETY: valid handle.
        let t = unsafe { sys::xs_transaction_start(self.h.as_ptr()) };
        if t == 0 {
            return Err(Self::err("transaction_start", ""));
        }
        Ok(Tx(t))
    }

    /// Ends a transaction; `Ok(false)` when it must be retried (EAGAIN: a conflicting
    /// change was committed meanwhile).
    pub fn transaction_end(&self, t: Tx, abort: bool) -> Result<bool, XenError> {
        // SAFETY: valid handle and transaction id from transaction_start.
        if unsafe { sys::xs_transaction_end(self.h.as_ptr(), t.0, abort) } {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(false);
        }
        Err(XenError::Store {
            op: "transaction_end",
            path: String::new(),
            source: e,
        })
    }

    /// Runs `f` in a transaction, retrying on EAGAIN (up to `max_tries`); an error from `f`
    /// aborts. Returns `f`'s value from the try that committed.
    pub fn transaction<T>(
        &self,
        max_tries: u32,
        mut f: impl FnMut(Tx) -> Result<T, XenError>,
    ) -> Result<T, XenError> {
        for _ in 0..max_tries.max(1) {
            let t = self.transaction_start()?;
            match f(t) {
                Ok(v) => {
                    if self.transaction_end(t, false)? {
                        return Ok(v);
                    }
                }
                Err(e) => {
                    let _ = self.transaction_end(t, true);
                    return Err(e);
                }
            }
        }
        Err(XenError::Store {
            op: "transaction",
            path: String::new(),
            source: io::Error::from_raw_os_error(libc::EAGAIN),
        })
    }
}

/// Domain management (what a toolstack does; dom0 only).
impl XenStore {
    /// `XS_INTRODUCE`: tells xenstored that domain `domid` exists, with its store ring at
    /// guest frame `mfn` and store event channel `port`. Fires `@introduceDomain`.
    pub fn introduce_domain(&self, domid: u16, mfn: u64, port: u32) -> Result<(), XenError> {
        // SAFETY: valid handle; plain values.
        if unsafe { sys::xs_introduce_domain(self.h.as_ptr(), u32::from(domid), mfn as _, port) } {
            Ok(())
        } else {
            Err(Self::err("introduce", &format!("domain {domid}")))
        }
    }

    /// `XS_RELEASE`: xenstored forgets domain `domid`. Fires `@releaseDomain`.
    pub fn release_domain(&self, domid: u16) -> Result<(), XenError> {
        // SAFETY: valid handle; plain value.
        if unsafe { sys::xs_release_domain(self.h.as_ptr(), u32::from(domid)) } {
            Ok(())
        } else {
            Err(Self::err("release", &format!("domain {domid}")))
        }
    }

    /// `XS_IS_DOMAIN_INTRODUCED`.
    pub fn is_domain_introduced(&self, domid: u16) -> bool {
        // SAFETY: valid handle; plain value.
        unsafe { sys::xs_is_domain_introduced(self.h.as_ptr(), u32::from(domid)) }
    }
}

impl Drop for XenStore {
    fn drop(&mut self) {
        // SAFETY: handle from xs_open, closed once.
        unsafe { sys::xs_close(self.h.as_ptr()) };
    }
}
