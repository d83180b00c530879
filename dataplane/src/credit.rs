//! Per-vif transmit credit: the token bucket of Linux netback, in poll mode.
//!
//! The backend's `rate` key ("bytes,usec") gives `credit_bytes` per `credit_usec` window.
//! A packet is admitted while the remaining credit covers it. When it does not, the vif is
//! throttled until the window that started at the last replenish ends; then credit is
//! topped up by one window's worth, capped at the burst. The burst is the seed's rule: big
//! enough for the packet at the head of the ring up to 128 KiB, and never less than one
//! window's credit, so a jumbo packet can't seize the interface up.
//!
//! Where the kernel arms a timer, this keeps a deadline that the poll loop checks: no
//! timer, no syscall. Time is nanoseconds from any monotonic clock, passed in.
//!
//! [`VifCredit`] is one vif's bucket shared by all its queues, wherever they run, so a
//! four-queue vif sends at its `rate`, not four times it. (Linux's netback gives every
//! queue the vif's whole rate; an operator's `rate` is for the vif.)
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, TryLockError};
use thiserror::Error;

/// The largest head packet the burst always lets through (seed: 128 KiB).
pub const MAX_BURST_FLOOR: u64 = 131_072;

/// A rate as xenstore's `rate` key states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub bytes: u64,
    pub usec: u64,
}

impl Rate {
    /// No limit (what a vif without a `rate` key gets).
    pub const UNLIMITED: Rate = Rate {
        bytes: u64::MAX,
        usec: 0,
    };

    pub fn is_unlimited(&self) -> bool {
        self.bytes == u64::MAX
    }
}

/// Why a `rate` value was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RateParseError {
    #[error("rate {0:?} is not \"<bytes>,<usec>\" with two decimal integers")]
    Malformed(String),
}

/// Parses the backend `rate` key: "<bytes>,<usec>", both unsigned decimal, nothing else.
/// The caller decides what a bad value means (Linux falls back to unlimited with a warning).
pub fn parse_rate(s: &str) -> Result<Rate, RateParseError> {
    let bad = || RateParseError::Malformed(s.chars().take(64).collect());
    let (b, u) = s.split_once(',').ok_or_else(bad)?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if !digits(b) || !digits(u) {
        return Err(bad());
    }
    let bytes = b.parse::<u64>().map_err(|_| bad())?;
    let usec = u.parse::<u64>().map_err(|_| bad())?;
    Ok(Rate { bytes, usec })
}

/// One vif's credit, shared by its queues (in one group or several). An lcore only ever
/// tries the lock: a queue that finds another one admitting waits for its next iteration,
/// it never spins or sleeps. An unlimited vif (the common case) costs one plain load.
#[derive(Debug)]
pub struct VifCredit {
    unlimited: AtomicBool,
    bucket: Mutex<Credit>,
}

/// One time base for every thread that admits (each group's TSC clock has its own epoch);
/// the monotonic clock, read only for rate-limited vifs.
fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

impl VifCredit {
    pub fn new(rate: Rate) -> std::sync::Arc<VifCredit> {
        std::sync::Arc::new(VifCredit {
            unlimited: AtomicBool::new(rate.is_unlimited()),
            bucket: Mutex::new(Credit::new(rate, now_ns())),
        })
    }

    /// Applies a new rate live (a fresh full window). Blocks on the lock: for the control
    /// plane, not for lcores.
    pub fn set_rate(&self, rate: Rate) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.set_rate(rate, now_ns());
        self.unlimited.store(rate.is_unlimited(), Ordering::Relaxed);
    }

    pub fn rate(&self) -> Rate {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner()).rate()
    }

    /// Credit left in the current window (for inspection; waits for the lock, which
    /// admitting lcores hold for a few instructions).
    pub fn remaining(&self) -> u64 {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remaining()
    }

    /// Asks for `size` bytes for a queue's head packet (see [`Credit::admit`]).
    #[inline]
    pub fn admit(&self, size: u32) -> Admit {
        if self.unlimited.load(Ordering::Relaxed) {
            return Admit::Yes;
        }
        self.admit_limited(size)
    }

    fn admit_limited(&self, size: u32) -> Admit {
        let now = now_ns();
        match self.bucket.try_lock() {
            Ok(mut b) => b.admit(size, now),
            Err(TryLockError::Poisoned(e)) => e.into_inner().admit(size, now),
            // Another queue of the vif is admitting right now: retry next iteration.
            Err(TryLockError::WouldBlock) => Admit::Throttled { until_ns: now },
        }
    }
}

/// Token bucket state of one vif (all its queues share it, through [`VifCredit`]).
#[derive(Clone, Debug)]
pub struct Credit {
    rate: Rate,
    window_ns: u64,
    remaining: u64,
    /// When the current window started (the seed's `credit_timeout.expires`).
    window_start_ns: u64,
    /// Set while throttled: no admission before this instant (the seed's pending timer).
    throttled_until: Option<u64>,
}

/// Outcome of asking for credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Not before this instant; the packet stays at the head of the ring.
    Throttled {
        until_ns: u64,
    },
}

impl Credit {
    pub fn new(rate: Rate, now_ns: u64) -> Self {
        Credit {
            rate,
            window_ns: rate.usec.saturating_mul(1000),
            remaining: rate.bytes,
            window_start_ns: now_ns,
            throttled_until: None,
        }
    }

    /// Applies a new rate live; starts a fresh full window, as Linux does on a rate change.
    pub fn set_rate(&mut self, rate: Rate, now_ns: u64) {
        *self = Credit::new(rate, now_ns);
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Asks for `size` bytes for the packet at the head of the ring, at time `now_ns`.
    /// On `Yes` the credit is consumed.
    pub fn admit(&mut self, size: u32, now_ns: u64) -> Admit {
        let size = u64::from(size);
        if size <= self.remaining && self.throttled_until.is_none() {
            self.remaining -= size;
            return Admit::Yes;
        }
        if let Some(deadline) = self.throttled_until {
            if now_ns < deadline {
                return Admit::Throttled { until_ns: deadline };
            }
            // The "timer" fired: top up, the window now starts at the deadline.
            self.throttled_until = None;
            self.window_start_ns = deadline;
            self.add_credit(size);
        }
        let next = self.window_start_ns.saturating_add(self.window_ns);
        if now_ns >= next {
            self.window_start_ns = now_ns;
            self.add_credit(size);
        }
        if size > self.remaining {
            let next = self.window_start_ns.saturating_add(self.window_ns);
            self.throttled_until = Some(next);
            return Admit::Throttled { until_ns: next };
        }
        self.remaining -= size;
        Admit::Yes
    }

    fn add_credit(&mut self, head_size: u64) {
        let max_burst = head_size.min(MAX_BURST_FLOOR).max(self.rate.bytes);
        let max_credit = self.remaining.saturating_add(self.rate.bytes);
        self.remaining = max_credit.min(max_burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn parses_rate() {
        assert_eq!(
            parse_rate("10000000,20000"),
            Ok(Rate {
                bytes: 10_000_000,
                usec: 20_000
            })
        );
        for bad in [
            "", ",", "1,", ",1", "1;2", "-1,2", "1,2,3", " 1,2", "1,2 ", "x,1",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert!(parse_rate("99999999999999999999999,1").is_err());
    }

    #[test]
    fn unlimited_never_throttles() {
        let mut c = Credit::new(Rate::UNLIMITED, 0);
        for i in 0..100_000 {
            assert_eq!(c.admit(65535, i), Admit::Yes);
        }
    }

    /// 1000 bytes per 1 ms: exactly 1000 bytes a window are admitted, in 100-byte packets.
    #[test]
    fn admits_rate_per_window() {
        let mut c = Credit::new(
            Rate {
                bytes: 1000,
                usec: 1000,
            },
            0,
        );
        let mut now = 0;
        let mut per_window = vec![0u64; 20];
        // Poll every 10 us for 20 windows, always with a 100-byte packet at the head.
        while now < 20 * MS {
            if c.admit(100, now) == Admit::Yes {
                per_window[(now / MS) as usize] += 100;
            }
            now += 10_000;
        }
        assert!(per_window.iter().all(|b| *b == 1000), "{per_window:?}");
    }

    /// The seed's burst rule: a head packet larger than one window's credit (up to 128 KiB)
    /// still gets through once credit accumulates to its size; idle credit never exceeds the burst.
    #[test]
    fn burst_rule() {
        // 100 bytes per ms; a 1500-byte packet needs max(min(1500,128K),100) = 1500 burst.
        let mut c = Credit::new(
            Rate {
                bytes: 100,
                usec: 1000,
            },
            0,
        );
        assert_eq!(c.admit(1500, 0), Admit::Throttled { until_ns: MS });
        let mut now = 0;
        let sent_at = loop {
            now += 100_000;
            if c.admit(1500, now) == Admit::Yes {
                break now;
            }
        };
        // Credit starts at 100 and grows 100 per window: 1500 is reached at 14 ms.
        assert_eq!(sent_at, 14 * MS);
        // The cap: idle for a long time, credit never exceeds one window (100) for small
        // packets, as max_burst = max(min(64,128K), 100) = 100.
        let mut c = Credit::new(
            Rate {
                bytes: 100,
                usec: 1000,
            },
            0,
        );
        assert_eq!(c.admit(100, 0), Admit::Yes);
        assert!(matches!(c.admit(64, 0), Admit::Throttled { .. }));
        assert_eq!(c.admit(64, 1000 * MS), Admit::Yes);
        assert_eq!(c.remaining(), 36);
        // A packet above 128 KiB can never pass a small rate (the seed's floor is 128 KiB).
        let mut c = Credit::new(
            Rate {
                bytes: 100,
                usec: 1,
            },
            0,
        );
        let mut now = 0;
        for _ in 0..10_000 {
            now += 1000;
            assert!(matches!(c.admit(200_000, now), Admit::Throttled { .. }));
        }
        assert_eq!(c.remaining(), MAX_BURST_FLOOR);
    }

    #[test]
    fn throttled_until_deadline_even_if_small_packet_fits() {
        let mut c = Credit::new(
            Rate {
                bytes: 1000,
                usec: 1000,
            },
            0,
        );
        assert_eq!(c.admit(900, 0), Admit::Yes);
        assert_eq!(c.admit(200, 0), Admit::Throttled { until_ns: MS });
        // 100 bytes remain, but the throttle holds until the deadline (packet order kept).
        assert_eq!(c.admit(50, MS / 2), Admit::Throttled { until_ns: MS });
        assert_eq!(c.admit(200, MS), Admit::Yes);
    }

    #[test]
    fn set_rate_applies_live() {
        let mut c = Credit::new(
            Rate {
                bytes: 100,
                usec: 1000,
            },
            0,
        );
        assert_eq!(c.admit(100, 0), Admit::Yes);
        assert!(matches!(c.admit(100, 1), Admit::Throttled { .. }));
        c.set_rate(Rate::UNLIMITED, 2);
        assert_eq!(c.admit(60000, 3), Admit::Yes);
    }

    /// Two queues on two threads share one vif's bucket: together they get the rate, and
    /// one that finds the lock taken is throttled for the moment, never blocked.
    #[test]
    fn vif_credit_is_shared_by_its_queues() {
        let c = VifCredit::new(Rate {
            bytes: 100_000,
            usec: 10_000,
        });
        let start = std::time::Instant::now();
        let run = std::time::Duration::from_millis(300);
        let admitted: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut n = 0u64;
                        while start.elapsed() < run {
                            if c.admit(1000) == Admit::Yes {
                                n += 1000;
                            }
                        }
                        n
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // 10 MB/s for 0.3 s: 3 MB plus the first window, well below twice the rate.
        let secs = start.elapsed().as_secs_f64();
        let want = 10e6 * secs + 100_000.0;
        assert!(
            (admitted as f64) <= want * 1.05 && (admitted as f64) >= want * 0.7,
            "{admitted} bytes in {secs:.3} s"
        );
        c.set_rate(Rate::UNLIMITED);
        assert_eq!(c.admit(65535), Admit::Yes);
        assert_eq!(c.rate(), Rate::UNLIMITED);
    }

    #[test]
    fn no_overflow_near_time_limits() {
        let mut c = Credit::new(
            Rate {
                bytes: u64::MAX - 1,
                usec: u64::MAX,
            },
            u64::MAX - 5,
        );
        assert_eq!(c.admit(65535, u64::MAX), Admit::Yes);
        let mut c = Credit::new(Rate { bytes: 0, usec: 0 }, 0);
        assert!(matches!(c.admit(1, u64::MAX), Admit::Throttled { .. }));
    }
}
