//! Running code on EAL worker lcores: the threads EAL created and pinned to the cores given
//! with `-l`/`--lcores`. netbackd's groups (one busy-polling loop each) run here.
use crate::error::{strerror, PmdError};
use dpdk_sys as sys;
use std::ffi::c_void;

/// The worker lcores EAL has (the main lcore excluded), in order.
pub fn workers() -> Vec<u32> {
    let mut v = Vec::new();
    // SAFETY: pure queries of EAL's lcore table (valid after init; before init the table
    // is empty and RTE_MAX_LCORE ends the walk at once).
    unsafe {
        let mut i = sys::rte_get_next_lcore(u32::MAX, 1, 0);
        while i < sys::RTE_MAX_LCORE {
            v.push(i);
            i = sys::rte_get_next_lcore(i, 1, 0);
        }
    }
    v
}

/// The calling thread's lcore id (`u32::MAX` for a thread EAL did not create).
pub fn current() -> u32 {
    // SAFETY: reads a thread-local.
    unsafe { sys::nbd_lcore_id() }
}

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

unsafe extern "C" fn trampoline(arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is the Box<Job> leaked by `launch` for exactly this call.
    let job: Box<Job> = unsafe { Box::from_raw(arg as *mut Job) };
    // A panic must not unwind into C: report it as a failure code instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or(-1)
}

/// Starts `f` on worker `lcore`; its return value comes back from [`wait`]. Fails if the
/// lcore is not a worker or is busy.
pub fn launch(lcore: u32, f: impl FnOnce() -> i32 + Send + 'static) -> Result<(), PmdError> {
    let job: Box<Job> = Box::new(Box::new(f));
    let arg = Box::into_raw(job) as *mut c_void;
    // SAFETY: trampoline matches lcore_function_t and takes ownership of `arg` if and only
    // if the launch succeeds.
    let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
    if ret != 0 {
        // Not launched: take the job back so it is dropped, not leaked.
        // SAFETY: arg came from Box::into_raw above and was not consumed.
        drop(unsafe { Box::from_raw(arg as *mut Job) });
        return Err(PmdError::InvalidArgument(format!(
            "cannot launch on lcore {lcore}: {}",
            strerror(-ret)
        )));
    }
    Ok(())
}

/// Waits for the job on `lcore` to finish and returns its value (-1 if it panicked).
pub fn wait(lcore: u32) -> i32 {
    // SAFETY: waiting on an lcore id is valid for any id; unknown ids return at once.
    unsafe { sys::rte_eal_wait_lcore(lcore) }
}
