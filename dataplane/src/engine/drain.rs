//! A clean stop: what a group took in is delivered before it lets go of its queues, so a
//! daemon stopped with SIGTERM and started again loses nothing. The group stops consuming
//! guest TX requests (each one consumed was already answered and forwarded within its
//! iteration: those left in the rings are the next daemon's) and keeps polling the port,
//! the handoff ring and the guest-RX backlogs until nothing has moved for a quiet period
//! with every backlog empty, or until a bound (a guest that posts no RX buffers cannot
//! hold the stop).
use super::Group;
use std::time::{Duration, Instant};
use xen::{EventChannel, GrantCopy};

/// What [`Group::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Frames delivered after guest TX stopped (to guests, or handed to other groups).
    pub delivered: u64,
    /// Frames still waiting for RX buffers (or held for a moving queue) at the bound:
    /// dropped with the group.
    pub dropped: u64,
    /// Whether the bound was reached before everything was delivered.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl<G: GrantCopy, E: EventChannel> Group<G, E> {
    /// Call after [`Group::run`] returned: stops consuming guest TX requests and delivers
    /// what is in flight, until `quiet` passed with no work and nothing waiting, or `max`.
    /// Each queue's rings are left with every consumed request answered (`req_cons` =
    /// `rsp_prod`), which is where a restarted daemon resumes them.
    pub fn drain(&mut self, quiet: Duration, max: Duration) -> Drained {
        self.draining = true;
        let t0 = Instant::now();
        let mut last_work = t0;
        let mut out = Drained::default();
        loop {
            let work = self.poll();
            let now = Instant::now();
            if work > 0 {
                out.delivered += work as u64;
                last_work = now;
            }
            let waiting = self.waiting();
            if waiting == 0 && now.duration_since(last_work) >= quiet {
                break;
            }
            if now.duration_since(t0) >= max {
                out.dropped = waiting as u64;
                out.timed_out = waiting > 0;
                break;
            }
            if work == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        out.elapsed = t0.elapsed();
        out
    }

    /// Frames this group holds for guests: backlogs, frames held for a moving queue, and
    /// frames other groups handed over not taken yet.
    fn waiting(&self) -> usize {
        let backlog: usize = self
            .queues
            .iter()
            .filter(|q| q.disabled.is_none())
            .map(|q| q.backlog.len())
            .sum();
        let inbox = self
            .handoff
            .as_ref()
            .map_or(0, |h| usize::from(!h.inbox.is_empty()));
        backlog + self.held.len() + inbox
    }
}
