//! Copies several WAL files at once on plain threads.
//!
//! The threads only run the archive protocol; results come back to the
//! calling thread, which alone may talk to PostgreSQL (the worker updates
//! shared memory and checks for signals in `on_result` and `should_stop`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use crate::archiving::archive_protocol::{archive_file, ArchiveOutcome};
use crate::destination::Destination;
use crate::support::error::ArchiveError;

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
/// list (the archiver's order). The calling thread hands out each job:
/// `should_stop` is asked right before, and every `poll` while copies run
/// (the caller notices a shutdown there and interrupts what runs); once it
/// says so no further copy starts (running ones finish and are reported);
/// `on_start` runs as a job is handed out, `on_result` as it ends. All three
/// run on the calling thread. Returns the jobs that never started.
pub fn run_parallel(
    jobs: Vec<CopyJob>,
    dest: &dyn Destination,
    parallel: usize,
    poll: Duration,
    mut on_start: impl FnMut(&CopyJob),
    mut on_result: impl FnMut(CopyResult),
    mut should_stop: impl FnMut() -> bool,
) -> Vec<CopyJob> {
    let threads = parallel.max(1).min(jobs.len());
    let mut queue = VecDeque::from(jobs);
    if threads == 0 {
        return Vec::new();
    }
    let mut stopped = false;
    let (job_tx, job_rx) = mpsc::channel::<CopyJob>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<CopyResult>();
        // No signal may land on a copy thread (see blocked_signals). If the mask
        // cannot be set, copy on this thread alone rather than risk it.
        let spawned = crate::support::blocked_signals::with_signals_blocked(|| {
            for _ in 0..threads {
                let tx = tx.clone();
                let job_rx = &job_rx;
                scope.spawn(move || copy_loop(job_rx, dest, &tx));
            }
        });
        drop(tx);
        if spawned.is_err() {
            drop(job_tx);
            while !queue.is_empty() && !should_stop() {
                let job = queue.pop_front().expect("not empty");
                on_start(&job);
                on_result(copy(dest, job));
            }
            stopped = true;
            return;
        }
        let mut idle = threads;
        loop {
            while idle > 0 && !stopped && !queue.is_empty() {
                if should_stop() {
                    stopped = true;
                    break;
                }
                let job = queue.pop_front().expect("not empty");
                on_start(&job);
                if let Err(mpsc::SendError(job)) = job_tx.send(job) {
                    // No copy thread is left: handed back as not started.
                    queue.push_front(job);
                    stopped = true;
                    break;
                }
                idle -= 1;
            }
            if idle == threads && (stopped || queue.is_empty()) {
                break;
            }
            match rx.recv_timeout(poll) {
                Ok(r) => {
                    idle += 1;
                    on_result(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !stopped && should_stop() {
                        stopped = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(job_tx);
    });
    queue.into()
}

fn copy(dest: &dyn Destination, job: CopyJob) -> CopyResult {
    let start = std::time::Instant::now();
    // A panic is a bug, but it must neither lose the job's result (the
    // caller counts on one per job) nor kill a copy thread.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        archive_file(dest, &job.name, &job.source)
    }))
    .unwrap_or_else(|_| {
        Err(ArchiveError::new(
            crate::support::error::ErrorKind::Internal,
            format!("internal error while copying \"{}\" ahead", job.name),
        ))
    });
    CopyResult {
        name: job.name,
        result,
        elapsed: start.elapsed(),
    }
}

/// One copy thread: copies the jobs it is handed until the sender is gone.
fn copy_loop(
    jobs: &Mutex<mpsc::Receiver<CopyJob>>,
    dest: &dyn Destination,
    tx: &mpsc::Sender<CopyResult>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = job else { break };
        if tx.send(copy(dest, job)).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores nothing: sleeps, then panics (a bug) or times out.
    struct Slow {
        panics: bool,
    }

    impl Destination for Slow {
        fn describe(&self) -> String {
            "slow".into()
        }
        fn location(&self, name: &str) -> String {
            name.into()
        }
        fn store_new(
            &self,
            _: &str,
            _: &std::path::Path,
        ) -> Result<crate::destination::Stored, ArchiveError> {
            std::thread::sleep(Duration::from_millis(200));
            if self.panics {
                panic!("a bug in a copy");
            }
            Err(crate::support::testing::down())
        }
        fn store_new_bytes(
            &self,
            n: &str,
            _: &[u8],
        ) -> Result<crate::destination::Stored, ArchiveError> {
            self.store_new(n, std::path::Path::new("/"))
        }
        fn recorded(&self, _: &str) -> Result<crate::destination::Recorded, ArchiveError> {
            Ok(crate::destination::Recorded::Missing)
        }
        fn write_record(
            &self,
            _: &str,
            _: &crate::wal::checksum::Sha256Digest,
        ) -> Result<(), ArchiveError> {
            Ok(())
        }
        fn make_durable(&self, _: &str) -> Result<(), ArchiveError> {
            Ok(())
        }
        fn size(&self, _: &str) -> Result<Option<u64>, ArchiveError> {
            Ok(None)
        }
        fn open(
            &self,
            _: &str,
        ) -> Result<Option<Box<dyn std::io::Read + Send + '_>>, ArchiveError> {
            Ok(None)
        }
        fn entries(&self) -> Result<Vec<crate::destination::Entry>, ArchiveError> {
            Ok(vec![])
        }
        fn list(&self) -> Result<Vec<String>, ArchiveError> {
            Ok(vec![])
        }
        fn remove(&self, _: &str) -> Result<(), ArchiveError> {
            Ok(())
        }
    }

    #[test]
    fn a_stop_is_asked_for_while_copies_run_and_a_panic_is_one_failed_result() {
        for panics in [false, true] {
            let (_d, jobs) = setup(3);
            let asked = Cell::new(0u32);
            let results = std::cell::RefCell::new(vec![]);
            let left = run_parallel(
                jobs,
                &Slow { panics },
                3,
                Duration::from_millis(10),
                |_| {},
                |r| results.borrow_mut().push(r),
                || {
                    asked.set(asked.get() + 1);
                    false
                },
            );
            assert!(left.is_empty());
            // Asked before each of the 3 jobs, then again while they ran
            // (200 ms at 10 ms a look).
            assert!(asked.get() > 6, "asked {} times", asked.get());
            let results = results.into_inner();
            assert_eq!(results.len(), 3, "one result per job, panics included");
            for r in &results {
                let e = r.result.as_ref().unwrap_err();
                if panics {
                    assert_eq!(e.kind, crate::support::error::ErrorKind::Internal, "{e}");
                }
            }
        }
    }
    use crate::destination::local_directory::LocalDirectory;
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
        let mut started = vec![];
        let left = run_parallel(
            jobs.clone(),
            &LocalDirectory::new(d.path().join("arch"), 0o600),
            4,
            Duration::from_millis(10),
            |j| started.push(j.name.clone()),
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
        assert!(left.is_empty());
        assert_eq!(
            started,
            jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>(),
            "started in order"
        );
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
        let started = Cell::new(0);
        let left = run_parallel(
            jobs,
            &LocalDirectory::new(d.path().join("arch"), 0o600),
            2,
            Duration::from_millis(1),
            |_| started.set(started.get() + 1),
            |_| seen.set(seen.get() + 1),
            || seen.get() >= 3,
        );
        let n = seen.get();
        assert_eq!(n, started.get(), "every copy started was reported");
        assert_eq!(n + left.len(), 50, "the rest is handed back");
        // Stopped as soon as asked: the copies running then (at most two)
        // were the only ones after the third result.
        assert!((3..=4).contains(&n), "{n}");
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
            |_| {},
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
