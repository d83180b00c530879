//! Event channels through `/dev/xen/evtchn`, one handle shared by every thread.
//!
//! A port bound on an evtchn fd can only be notified, unmasked and unbound through that
//! fd, and netbackd binds on its control thread while the engine's lcores notify and poll.
//! So every clone shares one fd. The kernel reports a fired port once by `read()` and keeps
//! it masked until the port number is written back (unmask); whichever thread reads the fd
//! records the ports in a shared bitmap, from which [`EventChannel::take_pending`] serves
//! each port to its owner, so draining never loses another thread's events.
use super::{last_err, open_dev, IOCTL_EVTCHN_BIND_UNBOUND_PORT, IOCTL_EVTCHN_RESET};
use crate::iface::EventChannel;
use crate::XenError;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xen_sys::{
    ioctl_evtchn_bind_interdomain, ioctl_evtchn_bind_unbound_port, ioctl_evtchn_notify,
    ioctl_evtchn_unbind, IOCTL_EVTCHN_BIND_INTERDOMAIN, IOCTL_EVTCHN_NOTIFY, IOCTL_EVTCHN_UNBIND,
};

/// Ports tracked in the bitmaps: the FIFO ABI's maximum (2^17), 16 KiB per bitmap. A port
/// beyond it (not seen in practice) is reported pending on every call, which is safe.
const MAX_PORTS: usize = 1 << 17;
const WORDS: usize = MAX_PORTS / 64;

struct Inner {
    fd: OwnedFd,
    /// Fired and not yet taken.
    pending: Box<[AtomicU64]>,
    /// Fired and not yet unmasked (the kernel holds it masked meanwhile).
    masked: Box<[AtomicU64]>,
    bound: Box<[AtomicU64]>,
    /// Highest port ever bound, to keep the wait() scan short.
    max_port: AtomicU32,
}

fn bitmap() -> Box<[AtomicU64]> {
    (0..WORDS).map(|_| AtomicU64::new(0)).collect()
}

fn slot(port: u32) -> Option<(usize, u64)> {
    let p = port as usize;
    (p < MAX_PORTS).then(|| (p / 64, 1u64 << (p % 64)))
}

impl Inner {
    fn set(map: &[AtomicU64], port: u32) {
        if let Some((w, b)) = slot(port) {
            map[w].fetch_or(b, Ordering::AcqRel);
        }
    }
    fn clear(map: &[AtomicU64], port: u32) -> bool {
        slot(port).is_some_and(|(w, b)| map[w].fetch_and(!b, Ordering::AcqRel) & b != 0)
    }

    /// Reads every fired port off the fd (non-blocking) into the bitmaps.
    fn drain(&self) {
        let mut buf = [0u32; 256];
        loop {
            // SAFETY: reads at most size_of_val(buf) bytes into buf.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of_val(&buf),
                )
            };
            if n <= 0 {
                if n < 0 && last_err().raw_os_error() == Some(libc::EFBIG) {
                    self.overflowed();
                    continue;
                }
                return;
            }
            let ports = n as usize / 4;
            for &p in &buf[..ports] {
                Self::set(&self.masked, p);
                Self::set(&self.pending, p);
            }
            if ports < buf.len() {
                return;
            }
        }
    }

    /// The kernel's ring overflowed and dropped ports: treat every bound port as fired,
    /// then reset the ring.
    fn overflowed(&self) {
        for (w, b) in self.bound.iter().enumerate() {
            let bits = b.load(Ordering::Acquire);
            if bits != 0 {
                self.pending[w].fetch_or(bits, Ordering::AcqRel);
            }
        }
        // SAFETY: IOCTL_EVTCHN_RESET takes no argument.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), IOCTL_EVTCHN_RESET as libc::c_ulong, 0) };
    }

    /// A port that fired and was unmasked again without being taken: wait() must not
    /// sleep over it.
    fn ready_unmasked(&self) -> bool {
        let words = (self.max_port.load(Ordering::Acquire) as usize / 64 + 1).min(WORDS);
        (0..words).any(|w| {
            self.pending[w].load(Ordering::Acquire) & !self.masked[w].load(Ordering::Acquire) != 0
        })
    }
}

/// The local domain's event channels; clones share one `/dev/xen/evtchn` handle.
#[derive(Clone)]
pub struct LinuxEvtchn {
    inner: Arc<Inner>,
}

fn err(op: &'static str, e: std::io::Error) -> XenError {
    XenError::Evtchn {
        op,
        msg: e.to_string(),
    }
}

impl LinuxEvtchn {
    /// Opens `/dev/xen/evtchn` (a clear error when it is missing or not permitted).
    pub fn open() -> Result<LinuxEvtchn, XenError> {
        Ok(LinuxEvtchn {
            inner: Arc::new(Inner {
                fd: open_dev("evtchn", libc::O_NONBLOCK)?,
                pending: bitmap(),
                masked: bitmap(),
                bound: bitmap(),
                max_port: AtomicU32::new(0),
            }),
        })
    }

    fn ioctl<T>(&self, op: &'static str, req: u64, arg: &mut T) -> Result<u32, XenError> {
        // SAFETY: each caller pairs `req` with its argument struct.
        let rc = unsafe {
            libc::ioctl(
                self.inner.fd.as_raw_fd(),
                req as libc::c_ulong,
                arg as *mut T,
            )
        };
        if rc < 0 {
            return Err(err(op, last_err()));
        }
        Ok(rc as u32)
    }

    fn track(&self, port: u32) {
        Inner::clear(&self.inner.pending, port);
        Inner::clear(&self.inner.masked, port);
        Inner::set(&self.inner.bound, port);
        self.inner.max_port.fetch_max(port, Ordering::AcqRel);
    }

    /// Allocates a local port that `remote_domid` may bind to (the frontend's side of a
    /// channel; netbackd itself only binds, this is for loopback tests).
    pub fn bind_unbound_port(&self, remote_domid: u16) -> Result<u32, XenError> {
        let mut arg = ioctl_evtchn_bind_unbound_port {
            remote_domain: u32::from(remote_domid),
        };
        let port = self.ioctl(
            "bind_unbound_port",
            IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            &mut arg,
        )?;
        self.track(port);
        Ok(port)
    }
}

impl EventChannel for LinuxEvtchn {
    fn bind_interdomain(&mut self, remote_domid: u16, remote_port: u32) -> Result<u32, XenError> {
        let mut arg = ioctl_evtchn_bind_interdomain {
            remote_domain: u32::from(remote_domid),
            remote_port,
        };
        let port = self.ioctl("bind_interdomain", IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg)?;
        self.track(port);
        Ok(port)
    }

    /// One ioctl (`EVTCHNOP_send` in the kernel); no locking on our side.
    fn notify(&self, port: u32) -> Result<(), XenError> {
        let mut arg = ioctl_evtchn_notify { port };
        self.ioctl("notify", IOCTL_EVTCHN_NOTIFY, &mut arg)
            .map(|_| ())
    }

    fn take_pending(&self, port: u32) -> bool {
        if slot(port).is_none() {
            return true;
        }
        if Inner::clear(&self.inner.pending, port) {
            return true;
        }
        self.inner.drain();
        Inner::clear(&self.inner.pending, port)
    }

    /// Writes the port to the fd, which re-enables its delivery in the kernel (an event
    /// that came meanwhile is delivered then).
    fn unmask(&self, port: u32) -> Result<(), XenError> {
        Inner::clear(&self.inner.masked, port);
        let bytes = port.to_ne_bytes();
        // SAFETY: writes 4 bytes from a local array.
        let n = unsafe { libc::write(self.inner.fd.as_raw_fd(), bytes.as_ptr().cast(), 4) };
        if n != 4 {
            return Err(err("unmask", last_err()));
        }
        Ok(())
    }

    fn unbind(&mut self, port: u32) -> Result<(), XenError> {
        let mut arg = ioctl_evtchn_unbind { port };
        self.ioctl("unbind", IOCTL_EVTCHN_UNBIND, &mut arg)?;
        Inner::clear(&self.inner.bound, port);
        Inner::clear(&self.inner.pending, port);
        Inner::clear(&self.inner.masked, port);
        Ok(())
    }

    /// poll() on the shared fd; returns at once if a port fired and was unmasked without
    /// being taken. A port drained by another thread during the poll does not wake this
    /// one: it is seen at the timeout (latency, never a lost event).
    fn wait(&self, timeout: Duration) {
        if self.inner.ready_unmasked() {
            return;
        }
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: self.inner.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> Inner {
        // A pipe stands in for the device: drain() reads port numbers from it.
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        let w = fds[1];
        // SAFETY: fresh descriptor owned from here on.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        let inner = Inner {
            fd,
            pending: bitmap(),
            masked: bitmap(),
            bound: bitmap(),
            max_port: AtomicU32::new(200),
        };
        for p in [3u32, 70, 3, 131_071] {
            // SAFETY: writing 4 bytes to the pipe's write end.
            unsafe { libc::write(w, p.to_ne_bytes().as_ptr().cast(), 4) };
        }
        // SAFETY: closing the write end we own.
        unsafe { libc::close(w) };
        inner
    }

    #[test]
    fn drain_feeds_every_port_once() {
        let inner = fake();
        let ev = LinuxEvtchn {
            inner: Arc::new(inner),
        };
        // Taking port 70 drains all; port 3's event is kept for its owner.
        assert!(ev.take_pending(70));
        assert!(!ev.take_pending(70));
        assert!(ev.take_pending(3));
        assert!(!ev.take_pending(3));
        assert!(ev.take_pending(131_071));
        assert!(!ev.take_pending(5));
        // Ports beyond the bitmap are always reported pending (safe side).
        assert!(ev.take_pending(MAX_PORTS as u32));
    }

    #[test]
    fn wait_returns_at_once_for_unmasked_pending() {
        let ev = LinuxEvtchn {
            inner: Arc::new(fake()),
        };
        ev.inner.drain();
        // Fired ports are masked: nothing ready yet.
        assert!(!ev.inner.ready_unmasked());
        Inner::clear(&ev.inner.masked, 3);
        assert!(ev.inner.ready_unmasked());
        let t = std::time::Instant::now();
        ev.wait(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(ev.take_pending(3));
    }

    #[test]
    fn is_send_sync_clone() {
        fn f<T: Send + Sync + Clone>() {}
        f::<LinuxEvtchn>();
    }

    #[test]
    fn open_without_xen_is_a_clear_error() {
        if std::path::Path::new("/dev/xen/evtchn").exists() {
            return;
        }
        let e = LinuxEvtchn::open().err().unwrap().to_string();
        assert!(
            e.contains("/dev/xen/evtchn") && e.contains("xen-evtchn"),
            "{e}"
        );
    }
}
