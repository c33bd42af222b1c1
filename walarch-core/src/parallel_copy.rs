//! Copies several WAL files at once on plain threads.
//!
//! The threads only run the archive protocol; results come back to the
//! calling thread, which alone may talk to PostgreSQL (the worker updates
//! shared memory and checks for signals in `on_result` and `should_stop`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use crate::archive_protocol::{archive_file, ArchiveOutcome};
use crate::destination::Destination;
use crate::error::ArchiveError;

#[derive(Debug, Clone)]
pub struct CopyJob {
    pub name: String,
    pub source: PathBuf,
}

#[derive(Debug)]
pub struct CopyResult {
    pub name: String,
    pub result: Result<ArchiveOutcome, ArchiveError>,
    /// How long the store took.
    pub elapsed: std::time::Duration,
}

/// Archives `jobs` into `dest` on up to `parallel` threads, in order of the
/// list (the archiver's order). `on_result` runs on the calling thread as
/// each copy ends; `should_stop` is polled there every `poll`, and once it
/// says so no further copy starts (running ones finish and are reported).
/// Returns the number of copies that ran.
pub fn run_parallel(
    jobs: Vec<CopyJob>,
    dest: &dyn Destination,
    parallel: usize,
    poll: Duration,
    mut on_result: impl FnMut(CopyResult),
    mut should_stop: impl FnMut() -> bool,
) -> usize {
    let threads = parallel.max(1).min(jobs.len());
    let queue = Mutex::new(VecDeque::from(jobs));
    let stop = AtomicBool::new(false);
    let mut done = 0;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<CopyResult>();
        // No signal may land on a copy thread (see blocked_signals). If the mask
        // cannot be set, copy on this thread alone rather than risk it.
        let spawned = crate::blocked_signals::with_signals_blocked(|| {
            for _ in 0..threads {
                let tx = tx.clone();
                let (queue, stop) = (&queue, &stop);
                scope.spawn(move || copy_loop(queue, stop, dest, &tx));
            }
        });
        if spawned.is_err() {
            copy_loop(&queue, &stop, dest, &tx);
        }
        drop(tx);
        loop {
            match rx.recv_timeout(poll) {
                Ok(r) => {
                    done += 1;
                    on_result(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if !stop.load(Ordering::Relaxed) && should_stop() {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    done
}

/// One copy thread: takes jobs in order until none is left, a stop is
/// requested, or the receiver is gone.
fn copy_loop(
    queue: &Mutex<VecDeque<CopyJob>>,
    stop: &AtomicBool,
    dest: &dyn Destination,
    tx: &mpsc::Sender<CopyResult>,
) {
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(job) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
            break;
        };
        let start = std::time::Instant::now();
        let result = archive_file(dest, &job.name, &job.source);
        if tx
            .send(CopyResult {
                name: job.name,
                result,
                elapsed: start.elapsed(),
            })
            .is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_directory::LocalDirectory;
    use std::cell::Cell;

    fn setup(n: usize) -> (tempfile::TempDir, Vec<CopyJob>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("wal")).unwrap();
        std::fs::create_dir(d.path().join("arch")).unwrap();
        let jobs = (0..n)
            .map(|i| {
                let name = format!("{:024X}", i + 1);
                let source = d.path().join("wal").join(&name);
                std::fs::write(&source, vec![i as u8; 200_000 + i]).unwrap();
                CopyJob { name, source }
            })
            .collect();
        (d, jobs)
    }

    #[test]
    fn copies_everything_with_results_on_the_calling_thread() {
        let (d, jobs) = setup(12);
        let me = std::thread::current().id();
        let mut names = vec![];
        let n = run_parallel(
            jobs.clone(),
            &LocalDirectory::new(d.path().join("arch"), 0o600),
            4,
            Duration::from_millis(10),
            |r| {
                assert_eq!(std::thread::current().id(), me);
                assert!(
                    matches!(r.result, Ok(ArchiveOutcome::Archived { .. })),
                    "{r:?}"
                );
                names.push(r.name);
            },
            || false,
        );
        assert_eq!(n, 12);
        names.sort();
        assert_eq!(
            names,
            jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>()
        );
        for j in &jobs {
            assert_eq!(
                std::fs::read(d.path().join("arch").join(&j.name)).unwrap(),
                std::fs::read(&j.source).unwrap()
            );
        }
    }

    #[test]
    fn stop_prevents_new_copies() {
        let (d, jobs) = setup(50);
        let seen = Cell::new(0);
        let n = run_parallel(
            jobs,
            &LocalDirectory::new(d.path().join("arch"), 0o600),
            2,
            Duration::from_millis(1),
            |_| seen.set(seen.get() + 1),
            || seen.get() >= 3,
        );
        assert_eq!(n, seen.get());
        assert!(n < 50, "stop was ignored");
        let archived = std::fs::read_dir(d.path().join("arch"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".sha256")
            })
            .count();
        assert_eq!(archived, n, "a copy ran but was not reported");
    }

    #[test]
    fn failures_are_reported_per_file() {
        let (d, mut jobs) = setup(3);
        jobs[1].source = d.path().join("missing");
        let mut failed = vec![];
        run_parallel(
            jobs,
            &LocalDirectory::new(d.path().join("arch"), 0o600),
            3,
            Duration::from_millis(5),
            |r| {
                if r.result.is_err() {
                    failed.push(r.name)
                }
            },
            || false,
        );
        assert_eq!(failed, vec![format!("{:024X}", 2)]);
    }
}
