//! systemd's readiness protocol (sd_notify(3)): datagrams such as `READY=1`,
//! `WATCHDOG=1` or `STATUS=...` sent to the unix socket named by `$NOTIFY_SOCKET` (a path,
//! or `@name` for the abstract namespace). Without the variable every call does nothing,
//! so the daemon runs the same outside systemd.
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Where to send notifications.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; None when unset or unusable (logged).
    pub fn from_env() -> Option<Notifier> {
        Notifier::to(&std::env::var_os("NOTIFY_SOCKET")?)
    }

    /// To the socket `v` names (a path, or `@name`).
    pub fn to(v: &std::ffi::OsStr) -> Option<Notifier> {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(v).to_vec();
        let addr = match bytes.split_first() {
            Some((b'@', name)) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(v)),
            _ => {
                tracing::warn!("NOTIFY_SOCKET {v:?} is neither a path nor @abstract: ignored");
                return None;
            }
        };
        let made = addr.and_then(|a| Ok((UnixDatagram::unbound()?, a)));
        match made {
            Ok((sock, addr)) => Some(Notifier { sock, addr }),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET {v:?}: {e}; not notifying systemd");
                None
            }
        }
    }

    /// Sends one notification (newline-separated assignments); failures are logged once
    /// per call and otherwise ignored (systemd going away must not stop the dataplane).
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::debug!("sd_notify {msg:?}: {e}");
        }
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set for this
/// process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `WATCHDOG=1` every interval, but only while every group's iteration counter has
/// advanced since the last ping: a stuck lcore stops the pings, and systemd restarts the
/// daemon after `WatchdogSec`.
pub struct Watchdog {
    every: Duration,
    last_ping: Instant,
    last: Vec<u64>,
    warned: bool,
}

impl Watchdog {
    pub fn new(every: Duration, iterations: Vec<u64>) -> Watchdog {
        Watchdog {
            every,
            last_ping: Instant::now(),
            last: iterations,
            warned: false,
        }
    }

    /// The interval between pings.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Called from the control loop with every group's `iterations` now; true when a
    /// ping is due and every group made progress since the last one (the caller pings).
    pub fn due(&mut self, iterations: Vec<u64>) -> bool {
        if self.last_ping.elapsed() < self.every {
            return false;
        }
        let stuck: Vec<usize> = iterations
            .iter()
            .zip(&self.last)
            .enumerate()
            .filter(|(_, (now, then))| now == then)
            .map(|(i, _)| i)
            .collect();
        if !stuck.is_empty() {
            if !self.warned {
                tracing::error!(
                    "group(s) {stuck:?} made no poll iteration for {:?}: not pinging the \
                     systemd watchdog",
                    self.last_ping.elapsed()
                );
                self.warned = true;
            }
            return false;
        }
        if self.warned {
            tracing::warn!("every group polls again: pinging the systemd watchdog again");
            self.warned = false;
        }
        self.last = iterations;
        self.last_ping = Instant::now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_only_while_every_group_advances() {
        let mut w = Watchdog::new(Duration::ZERO, vec![0, 0]);
        assert!(w.due(vec![5, 1]));
        assert!(!w.due(vec![9, 1]), "group 1 stuck");
        assert!(!w.due(vec![12, 1]));
        assert!(w.due(vec![13, 2]), "both advance again");
        let mut slow = Watchdog::new(Duration::from_secs(3600), vec![0]);
        assert!(!slow.due(vec![1]), "not due yet");
    }

    #[test]
    fn notifies_a_path_and_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let dir = std::env::temp_dir().join(format!("nbd-sdn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let name = format!("nbd-sdn-{}", std::process::id());
        let arx =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        assert!(Notifier::to(std::ffi::OsStr::new("relative")).is_none());
        for (env, sock) in [
            (p.to_str().unwrap().to_string(), &rx),
            (format!("@{name}"), &arx),
        ] {
            let n = Notifier::to(std::ffi::OsStr::new(&env)).unwrap();
            n.send("READY=1\nSTATUS=x");
            let mut buf = [0u8; 64];
            let k = sock.recv(&mut buf).unwrap();
            assert_eq!(&buf[..k], b"READY=1\nSTATUS=x");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
