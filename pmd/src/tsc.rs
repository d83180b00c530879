//! The time-stamp counter, as DPDK's poll loops use it: reading the clock through the
//! vDSO on every iteration costs more than an idle iteration itself.

/// The current TSC value (`rte_rdtsc`).
#[inline]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions and touches no memory.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: reads a counter; no arguments.
        unsafe { dpdk_sys::nbd_get_tsc_cycles() }
    }
}

/// TSC ticks per second as calibrated by EAL (0 before `Eal::init`).
pub fn hz() -> u64 {
    // SAFETY: returns EAL's calibrated value; no arguments.
    unsafe { dpdk_sys::nbd_get_tsc_hz() }
}

/// Nanoseconds since a start point, from the TSC (fixed-point scale, no division).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    t0: u64,
    /// Nanoseconds per cycle, times 2^32.
    mult: u64,
}

impl Clock {
    /// A clock starting now, scaled by EAL's TSC frequency (1 GHz assumed if EAL has none).
    pub fn start() -> Clock {
        let hz = match hz() {
            0 => 1_000_000_000,
            h => h,
        };
        Clock {
            t0: cycles(),
            mult: ((1_000_000_000u128 << 32) / u128::from(hz)) as u64,
        }
    }

    /// Nanoseconds since `start`.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        let d = cycles().wrapping_sub(self.t0);
        ((u128::from(d) * u128::from(self.mult)) >> 32) as u64
    }
}
