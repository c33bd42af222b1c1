//! Threads that never receive signals.
//!
//! A signal sent to a process is delivered to any one of its threads that
//! does not block it. PostgreSQL's signal handlers (and pgrx's, which check
//! they run on the main thread) must run on the thread that talks to the
//! server: a SIGTERM landing on a copy thread would abort the worker, and the
//! postmaster treats that as a crash of the whole cluster. So copy threads
//! start with every signal blocked. The mask is set in the parent around the
//! spawn, because a thread inherits it at creation: blocking from inside the
//! new thread would leave a window in which a signal could still land there.

use std::io;

/// Runs `spawn` (which must create exactly the threads wanted) with every
/// blockable signal blocked on the calling thread, then restores the calling
/// thread's mask. Threads created inside inherit the full mask.
pub fn with_signals_blocked<R>(spawn: impl FnOnce() -> R) -> io::Result<R> {
    // SAFETY: plain libc calls on stack-allocated sigset_t values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let r = spawn();
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(r)
    }
}

/// Whether `sig` is blocked on the calling thread.
#[cfg(test)]
fn is_blocked(sig: libc::c_int) -> bool {
    // SAFETY: reads the calling thread's mask into a local sigset_t.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        libc::sigismember(&cur, sig) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_threads_block_everything_and_the_caller_is_restored() {
        assert!(!is_blocked(libc::SIGTERM));
        let h = with_signals_blocked(|| {
            std::thread::spawn(|| {
                [
                    libc::SIGTERM,
                    libc::SIGHUP,
                    libc::SIGINT,
                    libc::SIGUSR1,
                    libc::SIGQUIT,
                ]
                .map(is_blocked)
            })
        })
        .unwrap();
        assert_eq!(h.join().unwrap(), [true; 5]);
        assert!(
            !is_blocked(libc::SIGTERM),
            "the caller's mask was not restored"
        );
        // A thread spawned normally is not affected.
        assert!(!std::thread::spawn(|| is_blocked(libc::SIGTERM))
            .join()
            .unwrap());
    }
}
