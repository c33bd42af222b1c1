//! The one tokio runtime of a process, and how synchronous callers use it.
//!
//! The `Destination` trait is synchronous and is called on PostgreSQL's
//! main thread (where signals must be handled and no other thread may call
//! into the server) and on plain worker threads. So:
//!
//! * The runtime is created lazily, on the first S3 call of a process,
//!   never at load time: the library is loaded in the postmaster, which
//!   forks, and threads do not survive a fork. A child that inherits a
//!   runtime created before a fork (its threads are gone) gets a new one,
//!   keyed by pid; the dead one is leaked, never dropped.
//! * Its threads are spawned with every signal blocked: the mask is blocked
//!   on the creating thread around `Builder::build` (which starts the
//!   worker threads), then restored. Tokio's blocking pool (used by the DNS
//!   resolver) starts threads later, from whichever thread calls
//!   `spawn_blocking`: always a runtime thread here, because callers never
//!   poll a future themselves: they `spawn` it onto the runtime and wait on
//!   a channel. `Handle::spawn` from a foreign thread only queues the task
//!   and wakes a worker; it creates no thread. So no runtime thread is ever
//!   created with the caller's (unblocked) mask.
//! * Every call has a deadline: the future runs under
//!   `tokio::time::timeout`, and the caller waits on the channel with
//!   `recv_timeout` a second longer, aborting the task if even that passes
//!   (a wedged runtime can never hang the caller).

use std::future::Future;
use std::io;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use walarch_core::support::blocked_signals::with_signals_blocked;

/// Worker threads of the runtime: requests are I/O bound; two keep one
/// slow response from delaying another.
pub const WORKER_THREADS: usize = 2;
/// Upper bound of the blocking pool (DNS look-ups only).
pub const MAX_BLOCKING_THREADS: usize = 4;
pub const THREAD_NAME: &str = "walarch-s3";

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// The process's runtime, created on first use (and again in a forked
/// child).
pub fn runtime() -> io::Result<&'static Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return Ok(rt);
        }
    }
    let rt = with_signals_blocked(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name(THREAD_NAME)
            .thread_keep_alive(Duration::from_secs(60))
            .enable_all()
            .build()
    })??;
    // Never dropped: dropping a runtime joins its threads, which is not
    // something to do from a server process's exit path.
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

/// Set by the host before its calls: true when a waiting caller must give
/// up at once (cancel, shutdown requested, postmaster gone). Replaced by
/// each caller: one process can be a SQL backend and then a base backup's
/// walsender (replication=database), whose checks differ. Called on the
/// waiting thread, which may not be the main one: it must only read flags.
static INTERRUPTED: Mutex<Option<fn() -> bool>> = Mutex::new(None);

/// How often a waiting caller checks for an interruption.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Installs `check`, replacing the previous one.
pub fn set_interrupt_check(check: fn() -> bool) {
    *INTERRUPTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(check);
}

fn interrupted() -> bool {
    let check = *INTERRUPTED.lock().unwrap_or_else(|p| p.into_inner());
    check.is_some_and(|check| check())
}

/// Why a call did not produce its result.
#[derive(Debug)]
pub enum RunError {
    /// The host asked waiting callers to give up (shutdown).
    Interrupted,
    /// The deadline passed.
    TimedOut(Duration),
    /// The runtime could not be created.
    Runtime(io::Error),
    /// The task panicked or was dropped.
    Lost,
}

/// A future running on the runtime, to be waited for by a blocking caller.
pub struct Pending<T> {
    rx: mpsc::Receiver<Result<T, tokio::time::error::Elapsed>>,
    task: tokio::task::JoinHandle<()>,
    deadline: Duration,
    until: Instant,
}

/// Starts `fut` on the runtime under a deadline of `deadline`.
pub fn spawn<T, F>(deadline: Duration, fut: F) -> Result<Pending<T>, RunError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let rt = runtime().map_err(RunError::Runtime)?;
    let (tx, rx) = mpsc::sync_channel(1);
    let task = rt.spawn(async move {
        let r = tokio::time::timeout(deadline, fut).await;
        let _ = tx.send(r);
    });
    Ok(Pending {
        rx,
        task,
        deadline,
        until: Instant::now() + deadline + Duration::from_secs(1),
    })
}

impl<T> Pending<T> {
    /// Blocks the calling thread until the result, the deadline, or an
    /// interruption.
    pub fn wait(self) -> Result<T, RunError> {
        loop {
            let left = self.until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(INTERRUPT_POLL)) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(_elapsed)) => return Err(RunError::TimedOut(self.deadline)),
                Err(mpsc::RecvTimeoutError::Timeout) if left <= INTERRUPT_POLL => {
                    self.task.abort();
                    return Err(RunError::TimedOut(self.deadline));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupted() {
                        self.task.abort();
                        return Err(RunError::Interrupted);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(RunError::Lost),
            }
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        // Not waited for (an error elsewhere): stop it. No effect once done.
        self.task.abort();
    }
}

/// `spawn` and `wait`.
pub fn run<T, F>(deadline: Duration, fut: F) -> Result<T, RunError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    spawn(deadline, fut)?.wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_on_this_thread(sig: libc::c_int) -> bool {
        // SAFETY: reads the calling thread's mask into a local sigset_t.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            libc::sigismember(&cur, sig) == 1
        }
    }

    /// (thread name, SigBlk mask) of every thread of this process.
    pub(crate) fn thread_masks() -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = t.unwrap().path();
            let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
                continue; // exited meanwhile
            };
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("")
                .trim()
                .to_string();
            let blk = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap();
            out.push((name, blk));
        }
        out
    }

    #[test]
    fn runtime_threads_block_all_signals_and_the_caller_is_untouched() {
        assert!(!blocked_on_this_thread(libc::SIGTERM));
        // Work that makes tokio start blocking-pool threads too (the DNS
        // resolver path): spawn_blocking from inside a runtime task.
        let n = run(Duration::from_secs(10), async {
            let mut hs = Vec::new();
            for _ in 0..MAX_BLOCKING_THREADS {
                hs.push(tokio::task::spawn_blocking(|| {
                    std::thread::sleep(Duration::from_millis(200));
                    blocked_on_this_thread(libc::SIGTERM)
                }));
            }
            let mut all = true;
            for h in hs {
                all &= h.await.unwrap();
            }
            (all, blocked_on_this_thread(libc::SIGTERM))
        })
        .unwrap();
        assert_eq!(
            n,
            (true, true),
            "a runtime or blocking thread has SIGTERM unblocked"
        );
        assert!(
            !blocked_on_this_thread(libc::SIGTERM),
            "caller's mask changed"
        );

        let term_bit = 1u64 << (libc::SIGTERM - 1);
        let int_bit = 1u64 << (libc::SIGINT - 1);
        let usr1_bit = 1u64 << (libc::SIGUSR1 - 1);
        let ours: Vec<_> = thread_masks()
            .into_iter()
            .filter(|(n, _)| n.starts_with(THREAD_NAME))
            .collect();
        assert!(
            ours.len() > WORKER_THREADS,
            "expected workers and blocking threads: {ours:?}"
        );
        for (name, blk) in &ours {
            for bit in [term_bit, int_bit, usr1_bit] {
                assert_ne!(blk & bit, 0, "{name}: SigBlk {blk:x}");
            }
        }
    }

    thread_local! {
        // Per thread: other tests waiting meanwhile are not interrupted.
        static STOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn the_interrupt_check_is_replaced() {
        // The first caller's check (that never stops)...
        set_interrupt_check(|| false);
        // ...is replaced by the next one's (read on the waiting thread).
        set_interrupt_check(|| STOP.with(|s| s.get()));
        STOP.with(|s| s.set(true));
        let t = Instant::now();
        let r = run(Duration::from_secs(30), async {
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        assert!(matches!(r, Err(RunError::Interrupted)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn deadline_is_kept() {
        let t = Instant::now();
        let r = run(Duration::from_millis(300), async {
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        assert!(matches!(r, Err(RunError::TimedOut(_))));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
