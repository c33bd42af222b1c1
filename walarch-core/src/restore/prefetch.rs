//! Prefetching for `restore_command`. PostgreSQL asks for one WAL file at a
//! time and waits for each, so from an object store every segment costs its
//! round trips. Here a detached helper fetches the segments after the last
//! one asked for, in parallel, verified while downloading (`restore`), into
//! the spool; the next `restore_command` calls take them from there,
//! checked again, and fall back to the archive for anything not there. The
//! helper is only an accelerator: killed, slow or failing, recovery gets
//! every file exactly as it would without it.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::destination::sealed::Identities;
use crate::destination::Destination;
use crate::restore::spool::{identity, Request, Serving, Spool, Taken, FETCHING};
use crate::restore::{restore_retrying, restore_verified, RestoreError, Retry};
use crate::wal::timeline_history::segments_after;
use crate::wal::walname::{WalFileKind, WalFileName};

/// Downloads at a time, at most: beyond this, more parallel GETs of 16 MB
/// segments only share the same bandwidth.
pub const MAX_JOBS: usize = 32;
/// How often the helper looks for a new request.
const TICK: Duration = Duration::from_millis(3);
/// How often it checks that the data directory and the spool still exist.
const LIVENESS_EVERY: Duration = Duration::from_millis(500);

/// How a restore went through the spool.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub len: u64,
    /// Taken from the spool rather than fetched now.
    pub from_spool: bool,
    /// No helper serves the spool: the caller should start one.
    pub start_helper: bool,
    /// Anything the operator should hear of (a refused spool file).
    pub warnings: Vec<String>,
}

/// Restores `walfile` to `dest` for recovery, through `spool` when a
/// helper serving `owner` (this data directory and archive) has it, from
/// the archive otherwise; tells the helper what was asked for. `archive`
/// opens the archive: only called when the file is not taken from the
/// spool (opening a bucket's client costs more than taking a file). A file
/// fetched here is retried as `restore_retrying` does: whatever the helper
/// met, the answer is the archive's, never a failed prefetch. `ids`
/// decrypt encrypted forms.
#[allow(clippy::too_many_arguments)]
pub fn restore_through_spool<'a>(
    archive: &dyn Fn() -> Result<&'a dyn Destination, RestoreError>,
    ids: Option<&Identities>,
    spool: &Spool,
    owner: &str,
    walfile: &str,
    dest: &Path,
    wait: Duration,
    retry: &Retry,
    log: &dyn Fn(&str),
) -> Result<Outcome, RestoreError> {
    let mut warnings = vec![];
    let kind = WalFileName::parse(walfile).map(|w| w.kind);
    let serving = spool.serving(owner);
    if serving == Serving::Other {
        warnings.push(format!(
            "the prefetch spool \"{}\" serves another recovery; fetching \"{walfile}\" without prefetching",
            spool.dir.display()
        ));
        let len = restore_retrying(archive, ids, walfile, dest, retry, log)?.len;
        return Ok(Outcome {
            len,
            from_spool: false,
            start_helper: false,
            warnings,
        });
    }
    if kind == Some(WalFileKind::Segment) && serving == Serving::Us {
        match spool.take(walfile, dest, wait) {
            Ok(Taken::Placed(len)) => {
                let _ = spool.write_request(walfile, len);
                return Ok(Outcome {
                    len,
                    from_spool: true,
                    start_helper: false,
                    warnings,
                });
            }
            Ok(Taken::Absent) => {}
            Ok(Taken::Refused(m)) => warnings.push(m),
            Err(e) => warnings.push(format!(
                "could not take \"{walfile}\" from the prefetch spool: {}",
                crate::support::error::os_message(&e)
            )),
        }
    }
    let restored = restore_retrying(archive, ids, walfile, dest, retry, log)?;
    let mut start_helper = false;
    match kind {
        Some(WalFileKind::Segment) => {
            if let Err(e) = spool.write_request(walfile, restored.len) {
                warnings.push(format!(
                    "could not write to the prefetch spool \"{}\": {}",
                    spool.dir.display(),
                    crate::support::error::os_message(&e)
                ));
            } else {
                start_helper = serving == Serving::Nobody;
            }
        }
        // Kept for the helper: which timelines the coming segments are on.
        Some(WalFileKind::History) => {
            let _ = spool.note_history(walfile, dest);
        }
        _ => {}
    }
    Ok(Outcome {
        len: restored.len,
        from_spool: false,
        start_helper,
        warnings,
    })
}

pub struct HelperOptions {
    /// Segments kept fetched ahead of the last one asked for.
    pub depth: usize,
    /// Stop when nothing is asked for this long.
    pub idle: Duration,
    /// The data directory served: stop when it is removed.
    pub data_dir: Option<PathBuf>,
    /// Who the helper serves (data directory and archive), written to the
    /// spool so that no other recovery uses it.
    pub owner: String,
    /// What decrypts encrypted forms: they are spooled only as the WAL
    /// file they verify to, like any other.
    pub identities: Option<std::sync::Arc<Identities>>,
}

/// What a helper did, for its last words in the server log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub fetched: u64,
    pub discarded: u64,
    pub failed: u64,
    pub why: String,
}

#[derive(Default)]
struct State {
    /// The segments to have in the spool, in the order they will be asked for.
    wanted: Vec<String>,
    queue: VecDeque<String>,
    in_flight: HashSet<String>,
    /// Not found or failed since the last request: not tried again until
    /// the next one.
    settled: HashSet<String>,
    /// Refused (corrupt, unverifiable): never tried again by this helper.
    refused: HashSet<String>,
    /// Put in the spool after the last request: not fetched again if they
    /// are gone (taken by a restore faster than this helper's look at the
    /// requests).
    published: HashSet<String>,
    /// Failures already reported, so that each is reported once.
    reported: HashSet<String>,
    stop: bool,
    /// Downloads ended (whatever their outcome): the number at a time grows
    /// with them.
    ended: u64,
    fetched: u64,
    discarded: u64,
    failed: u64,
}

struct Shared<'a> {
    archive: &'a dyn Destination,
    ids: Option<&'a Identities>,
    /// Downloads at a time, at most.
    jobs: usize,
    spool: &'a Spool,
    state: Mutex<State>,
    wake: Condvar,
    log: &'a (dyn Fn(&str) + Sync),
}

impl Shared<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A download thread: fetches queued names until told to stop.
    fn fetch_loop(&self) {
        loop {
            let name = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    // Slow start: the first segments recovery needs do not
                    // share the link and the CPU with a full window's worth.
                    let allowed = (2 + st.ended as usize).min(self.jobs);
                    if st.in_flight.len() < allowed {
                        if let Some(n) = st.queue.pop_front() {
                            st.in_flight.insert(n.clone());
                            break n;
                        }
                    }
                    st = self
                        .wake
                        .wait_timeout(st, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            let fetched = self.spool.path(&format!("{FETCHING}{name}"));
            // Unmarked when this iteration ends, whatever happens (even a
            // panic): restore never waits for a download nobody makes. It
            // is dropped after the publishing below, so restore, waiting
            // for it, sees one or the other.
            let _unmark = Unmark(self.spool, &name);
            let r = restore_verified(self.archive, self.ids, &name, &fetched);
            let mut st = self.lock();
            st.in_flight.remove(&name);
            st.ended += 1;
            self.wake.notify_all();
            match r {
                Ok(r) if !st.stop && st.wanted.contains(&name) => {
                    if self.spool.publish(&fetched, &name, &r.sha256).is_ok() {
                        st.fetched += 1;
                        st.published.insert(name.clone());
                    } else {
                        let _ = std::fs::remove_file(&fetched);
                    }
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&fetched);
                    st.discarded += 1;
                }
                Err(RestoreError::NotFound(_)) => {
                    st.settled.insert(name.clone());
                }
                Err(e) => {
                    if matches!(e, RestoreError::Integrity(_)) {
                        st.refused.insert(name.clone());
                    }
                    st.settled.insert(name.clone());
                    st.failed += 1;
                    let first = st.reported.insert(name.clone());
                    drop(st);
                    // restore_command meets the same error when it gets
                    // there, and reports it as it would without prefetching.
                    if first {
                        (self.log)(&format!("could not prefetch \"{name}\": {e}"));
                    }
                }
            }
        }
    }

    /// A new request: what to keep, what to discard, what to fetch.
    fn replan(&self, r: &Request, depth: usize) {
        let tli = WalFileName::parse(&r.walfile).map_or(1, |w| w.timeline);
        let timelines = self.spool.timelines_for(tli);
        let wanted = segments_after(&r.walfile, r.segment_size, depth, &timelines);
        let mut st = self.lock();
        let mut have = HashSet::new();
        for (walfile, file) in self.spool.ready() {
            if wanted.contains(&walfile) {
                have.insert(walfile);
            } else if std::fs::remove_file(self.spool.path(&file)).is_ok() {
                st.discarded += 1;
            }
        }
        st.settled.clear();
        st.published.retain(|n| *n > r.walfile);
        let queue: VecDeque<String> = wanted
            .iter()
            .filter(|w| {
                !have.contains(*w)
                    && !st.in_flight.contains(*w)
                    && !st.refused.contains(*w)
                    && !st.published.contains(*w)
            })
            .cloned()
            .collect();
        // Queued files are marked as coming, as those being fetched are:
        // restore waits for them rather than fetch them a second time.
        for gone in st.queue.iter().filter(|n| !queue.contains(n)) {
            self.spool.unmark_in_flight(gone);
        }
        for n in &queue {
            let _ = self.spool.mark_in_flight(n);
        }
        st.queue = queue;
        st.wanted = wanted;
        self.wake.notify_all();
    }
}

/// Removes an in-flight marker when dropped.
struct Unmark<'a>(&'a Spool, &'a str);

impl Drop for Unmark<'_> {
    fn drop(&mut self) {
        self.0.unmark_in_flight(self.1);
    }
}

/// Runs the prefetch helper on `spool` until recovery stops asking (`idle`)
/// or the data directory or the spool goes away. `None` when another helper
/// already serves the spool. Messages go to `log`.
pub fn run_helper(
    archive: &dyn Destination,
    spool: &Spool,
    opts: &HelperOptions,
    log: &(dyn Fn(&str) + Sync),
) -> io::Result<Option<Summary>> {
    let Some(_lock) = spool.lock()? else {
        return Ok(None);
    };
    // Whatever a helper before this one left is not trusted; histories
    // are kept unless another recovery's helper left them (histories noted
    // before any helper ran are this recovery's own).
    spool.clear(!spool.left_by_other(&opts.owner));
    spool.write_owner(&opts.owner)?;
    let watched: Vec<(PathBuf, Option<(u64, u64)>)> = [
        Some(spool.dir.clone()),
        Some(spool.path("lock")),
        opts.data_dir.as_ref().map(|d| d.join("PG_VERSION")),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        let id = identity(&p);
        (p, id)
    })
    .collect();
    let depth = opts.depth.max(1);
    let shared = Shared {
        archive,
        ids: opts.identities.as_deref(),
        jobs: depth.min(MAX_JOBS),
        spool,
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        log,
    };
    let why = std::thread::scope(|s| {
        for _ in 0..shared.jobs {
            s.spawn(|| shared.fetch_loop());
        }
        let why = watch(&shared, &watched, depth, opts.idle);
        shared.lock().stop = true;
        shared.wake.notify_all();
        why
    });
    let st = shared.lock();
    spool.clear(true);
    Ok(Some(Summary {
        fetched: st.fetched,
        discarded: st.discarded,
        failed: st.failed,
        why,
    }))
}

/// The helper's main loop: follows the requests until it should stop;
/// returns why it stops.
fn watch(
    shared: &Shared,
    watched: &[(PathBuf, Option<(u64, u64)>)],
    depth: usize,
    idle: Duration,
) -> String {
    let mut last: Option<Request> = None;
    let mut active = Instant::now();
    let mut checked = Instant::now();
    loop {
        std::thread::sleep(TICK);
        if checked.elapsed() >= LIVENESS_EVERY {
            checked = Instant::now();
            if let Some((p, _)) = watched.iter().find(|(p, id)| identity(p) != *id) {
                return format!("\"{}\" was removed", p.display());
            }
        }
        let r = shared.spool.read_request();
        if r != last {
            active = Instant::now();
            if let Some(r) = &r {
                shared.replan(r, depth);
            }
            last = r;
        } else if active.elapsed() >= idle {
            return format!(
                "nothing was asked for in {}",
                crate::wal::time::describe(idle)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::archive_protocol::archive_file;
    use crate::destination::local_directory::LocalDirectory;
    use crate::wal::walname::segment_file_name;
    use std::fs;

    const SEG: u64 = 1 << 20;

    /// `restore_through_spool` without retries.
    fn through_spool<'a>(
        archive: &dyn Fn() -> Result<&'a dyn Destination, RestoreError>,
        spool: &Spool,
        owner: &str,
        walfile: &str,
        dest: &Path,
        wait: Duration,
    ) -> Result<Outcome, RestoreError> {
        restore_through_spool(
            archive,
            None,
            spool,
            owner,
            walfile,
            dest,
            wait,
            &Retry::never(),
            &|_| {},
        )
    }

    struct Setup {
        _d: tempfile::TempDir,
        data: PathBuf,
        arch: LocalDirectory,
        spool: Spool,
    }

    /// An archive of segments 1..=n on timeline 1 (1 MB segments), and a
    /// data directory with its spool.
    fn setup(n: u64) -> Setup {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        fs::create_dir_all(data.join("pg_wal")).unwrap();
        fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        let arch_dir = d.path().join("arch");
        fs::create_dir(&arch_dir).unwrap();
        let arch = LocalDirectory::new(&arch_dir, 0o600);
        for s in 1..=n {
            add(&arch, d.path(), 1, s);
        }
        let spool = Spool::create(
            &data
                .join("pg_wal")
                .join(crate::restore::spool::DEFAULT_NAME),
        )
        .unwrap();
        Setup {
            _d: d,
            data,
            arch,
            spool,
        }
    }

    fn content(tli: u32, s: u64) -> Vec<u8> {
        let mut v = vec![0u8; SEG as usize];
        v[..8].copy_from_slice(&s.to_le_bytes());
        v[8..12].copy_from_slice(&tli.to_le_bytes());
        v
    }

    fn add(arch: &LocalDirectory, tmp: &Path, tli: u32, s: u64) {
        let name = segment_file_name(tli, s, SEG);
        let f = tmp.join(&name);
        fs::write(&f, content(tli, s)).unwrap();
        archive_file(arch, &name, &f).unwrap();
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ready(s: &Spool) -> Vec<String> {
        let mut v: Vec<String> = s.ready().into_iter().map(|(w, _)| w).collect();
        v.sort();
        v
    }

    fn opts(s: &Setup, depth: usize, idle_ms: u64) -> HelperOptions {
        HelperOptions {
            depth,
            idle: Duration::from_millis(idle_ms),
            data_dir: Some(s.data.clone()),
            owner: "data\narchive\n".into(),
            identities: None,
        }
    }

    /// Recovery as PostgreSQL runs it: segments asked for in order, each
    /// restored through the spool, with a helper running alongside.
    #[test]
    fn recovery_takes_prefetched_segments_in_order_and_the_helper_cleans_up() {
        let s = setup(12);
        let dest = s.data.join("pg_wal/RECOVERYXLOG");
        let owner = "data\narchive\n";
        let logged = Mutex::new(vec![]);
        let log = |m: &str| logged.lock().unwrap().push(m.to_string());
        std::thread::scope(|sc| {
            let helper = sc.spawn(|| run_helper(&s.arch, &s.spool, &opts(&s, 4, 1500), &log));
            wait_until("the helper's lock", || s.spool.helper_running());
            let mut from_spool = 0;
            for seg in 1..=12u64 {
                let name = segment_file_name(1, seg, SEG);
                let o = through_spool(
                    &|| Ok(&s.arch),
                    &s.spool,
                    owner,
                    &name,
                    &dest,
                    Duration::from_secs(10),
                )
                .unwrap();
                assert_eq!(fs::read(&dest).unwrap(), content(1, seg), "{name}");
                assert!(o.warnings.is_empty(), "{:?}", o.warnings);
                from_spool += o.from_spool as u32;
                // Bounded: never more than depth files ahead.
                assert!(s.spool.ready().len() <= 4);
                if seg == 3 {
                    wait_until("segments 4-7 prefetched", || ready(&s.spool).len() == 4);
                    assert_eq!(
                        ready(&s.spool),
                        (4..=7)
                            .map(|n| segment_file_name(1, n, SEG))
                            .collect::<Vec<_>>()
                    );
                }
            }
            assert!(
                from_spool >= 9,
                "only {from_spool} of 12 came from the spool"
            );
            // The end of the archive: not found, as without prefetching.
            let next = segment_file_name(1, 13, SEG);
            assert!(matches!(
                through_spool(
                    &|| Ok(&s.arch),
                    &s.spool,
                    owner,
                    &next,
                    &dest,
                    Duration::from_secs(1)
                ),
                Err(RestoreError::NotFound(_))
            ));
            let summary = helper.join().unwrap().unwrap().unwrap();
            assert!(summary.why.contains("nothing was asked for"), "{summary:?}");
            assert_eq!(summary.failed, 0);
        });
        assert!(
            ready(&s.spool).is_empty(),
            "the helper leaves nothing behind"
        );
        assert!(!s.spool.helper_running());
        assert!(logged.lock().unwrap().is_empty());
    }

    /// Encrypted segments are prefetched with the identities restore was
    /// given, and spooled only as the WAL files they verify to; a helper
    /// without them spools nothing.
    #[test]
    fn encrypted_segments_are_prefetched_only_with_the_identities() {
        use crate::destination::compressing::{Compressing, Sealing};
        let s = setup(0);
        let (r, ids) = crate::destination::sealed::tests::keys();
        let ids = std::sync::Arc::new(ids);
        let view = Compressing::new(&s.arch, Some(1)).sealing(Sealing::To(std::sync::Arc::new(r)));
        for seg in 1..=8 {
            let name = segment_file_name(1, seg, SEG);
            let f = s._d.path().join(&name);
            fs::write(&f, content(1, seg)).unwrap();
            archive_file(&view, &name, &f).unwrap();
        }
        assert!(s
            ._d
            .path()
            .join("arch")
            .join(format!("{}.zst.age", segment_file_name(1, 1, SEG)))
            .is_file());
        let dest = s.data.join("pg_wal/RECOVERYXLOG");
        let owner = "data\narchive\n";
        let restore = |seg: u64, ids: Option<&Identities>| {
            restore_through_spool(
                &|| Ok(&s.arch),
                ids,
                &s.spool,
                owner,
                &segment_file_name(1, seg, SEG),
                &dest,
                Duration::from_secs(10),
                &Retry::never(),
                &|_| {},
            )
        };
        // Without identities restore refuses (recovery stops), and so does
        // the helper: nothing reaches the spool.
        let e = restore(1, None).unwrap_err();
        assert!(matches!(e, RestoreError::Integrity(_)), "{e}");
        let logged = Mutex::new(vec![]);
        let log = |m: &str| logged.lock().unwrap().push(m.to_string());
        std::thread::scope(|sc| {
            let helper = sc.spawn(|| run_helper(&s.arch, &s.spool, &opts(&s, 3, 300), &log));
            wait_until("the helper's lock", || s.spool.helper_running());
            let o = restore(1, Some(&ids)).unwrap();
            assert!(!o.from_spool);
            wait_until("the helper's failures", || {
                logged.lock().unwrap().len() >= 3
            });
            assert!(ready(&s.spool).is_empty());
            let summary = helper.join().unwrap().unwrap().unwrap();
            assert!(summary.failed >= 3, "{summary:?}");
        });
        let said = logged.lock().unwrap().join("\n");
        assert!(said.contains("no identity was given"), "{said}");

        // With them: prefetched, decrypted and verified.
        let logged = Mutex::new(vec![]);
        let log = |m: &str| logged.lock().unwrap().push(m.to_string());
        let mut o = opts(&s, 3, 1500);
        o.identities = Some(ids.clone());
        std::thread::scope(|sc| {
            let helper = sc.spawn(|| run_helper(&s.arch, &s.spool, &o, &log));
            wait_until("the helper's lock", || s.spool.helper_running());
            let mut from_spool = 0;
            for seg in 1..=8 {
                let out = restore(seg, Some(&ids)).unwrap();
                assert_eq!(fs::read(&dest).unwrap(), content(1, seg));
                from_spool += out.from_spool as u32;
                if seg == 2 {
                    wait_until("segments 3-5 prefetched", || ready(&s.spool).len() == 3);
                }
            }
            assert!(
                from_spool >= 3,
                "only {from_spool} of 8 came from the spool"
            );
            let summary = helper.join().unwrap().unwrap().unwrap();
            assert_eq!(summary.failed, 0, "{summary:?}");
        });
        assert!(
            logged.lock().unwrap().is_empty(),
            "{:?}",
            logged.lock().unwrap()
        );
    }

    #[test]
    fn a_corrupt_archived_segment_never_reaches_the_spool_and_is_refused_as_without_prefetching() {
        let s = setup(8);
        let bad = segment_file_name(1, 4, SEG);
        let p = s._d.path().join("arch").join(&bad);
        let mut b = fs::read(&p).unwrap();
        b[100] ^= 1;
        fs::write(&p, b).unwrap();
        let logged = Mutex::new(vec![]);
        let log = |m: &str| logged.lock().unwrap().push(m.to_string());
        let dest = s.data.join("pg_wal/RECOVERYXLOG");
        std::thread::scope(|sc| {
            let helper = sc.spawn(|| run_helper(&s.arch, &s.spool, &opts(&s, 6, 1500), &log));
            wait_until("the helper's lock", || s.spool.helper_running());
            let first = segment_file_name(1, 1, SEG);
            through_spool(
                &|| Ok(&s.arch),
                &s.spool,
                "data\narchive\n",
                &first,
                &dest,
                Duration::from_secs(5),
            )
            .unwrap();
            wait_until("2, 3, 5, 6, 7 prefetched", || ready(&s.spool).len() == 5);
            assert!(!ready(&s.spool).contains(&bad));
            for seg in 2..=3 {
                let n = segment_file_name(1, seg, SEG);
                let o = through_spool(
                    &|| Ok(&s.arch),
                    &s.spool,
                    "data\narchive\n",
                    &n,
                    &dest,
                    Duration::from_secs(5),
                )
                .unwrap();
                assert!(o.from_spool, "{n}: {o:?} {:?}", ready(&s.spool));
            }
            fs::remove_file(&dest).unwrap();
            let e = through_spool(
                &|| Ok(&s.arch),
                &s.spool,
                "data\narchive\n",
                &bad,
                &dest,
                Duration::from_secs(5),
            )
            .unwrap_err();
            assert!(
                matches!(e, RestoreError::Integrity(ref m) if m.contains("checksum mismatch")),
                "{e}"
            );
            assert!(!dest.exists());
            let summary = helper.join().unwrap().unwrap().unwrap();
            assert_eq!(summary.failed, 1);
        });
        let logged = logged.lock().unwrap();
        assert!(
            logged.len() == 1 && logged[0].contains("checksum mismatch"),
            "{logged:?}"
        );
    }

    #[test]
    fn follows_a_new_timeline_and_discards_what_no_longer_applies() {
        let s = setup(10);
        // Timeline 2 forks at the start of segment 5 and has 5..=8.
        for seg in 5..=8 {
            add(&s.arch, s._d.path(), 2, seg);
        }
        let dest = s.data.join("pg_wal/RECOVERYXLOG");
        let owner = "data\narchive\n";
        let log = |_: &str| {};
        std::thread::scope(|sc| {
            let helper = sc.spawn(|| run_helper(&s.arch, &s.spool, &opts(&s, 4, 1500), &log));
            wait_until("the helper's lock", || s.spool.helper_running());
            through_spool(
                &|| Ok(&s.arch),
                &s.spool,
                owner,
                &segment_file_name(1, 2, SEG),
                &dest,
                Duration::from_secs(5),
            )
            .unwrap();
            wait_until("timeline 1 prefetched", || {
                ready(&s.spool)
                    == (3..=6)
                        .map(|n| segment_file_name(1, n, SEG))
                        .collect::<Vec<_>>()
            });
            // Recovery restores the new timeline's history...
            let h = s._d.path().join("00000002.history");
            fs::write(&h, "1\t0/500000\tno recovery target specified\n").unwrap();
            let hist = s._d.path().join("hist");
            fs::create_dir(&hist).unwrap();
            archive_file(&s.arch, "00000002.history", &h).unwrap();
            through_spool(
                &|| Ok(&s.arch),
                &s.spool,
                owner,
                "00000002.history",
                &s.data.join("pg_wal/RECOVERYHISTORY"),
                Duration::ZERO,
            )
            .unwrap();
            // ... and goes on asking for segment 3 of timeline 1.
            through_spool(
                &|| Ok(&s.arch),
                &s.spool,
                owner,
                &segment_file_name(1, 3, SEG),
                &dest,
                Duration::from_secs(5),
            )
            .unwrap();
            let expect: Vec<String> = [(1, 4), (2, 5), (2, 6), (2, 7)]
                .iter()
                .map(|&(t, n)| segment_file_name(t, n, SEG))
                .collect();
            wait_until("the new timeline prefetched", || ready(&s.spool) == expect);
            for (t, n) in [(1, 4), (2, 5), (2, 6), (2, 7), (2, 8)] {
                let o = through_spool(
                    &|| Ok(&s.arch),
                    &s.spool,
                    owner,
                    &segment_file_name(t, n, SEG),
                    &dest,
                    Duration::from_secs(5),
                )
                .unwrap();
                assert_eq!(fs::read(&dest).unwrap(), content(t, n));
                assert!(o.from_spool || n == 8 || n == 4, "{t} {n}");
            }
            helper.join().unwrap().unwrap().unwrap();
        });
    }

    #[test]
    fn one_helper_per_spool_and_it_stops_when_the_data_directory_goes() {
        let s = setup(3);
        let log = |_: &str| {};
        let o = opts(&s, 2, 60_000);
        std::thread::scope(|sc| {
            let helper = sc.spawn(|| run_helper(&s.arch, &s.spool, &o, &log));
            wait_until("the helper's lock", || s.spool.helper_running());
            assert_eq!(run_helper(&s.arch, &s.spool, &o, &log).unwrap(), None);
            // Another recovery's restore does not use it, nor disturb it.
            let other = through_spool(
                &|| Ok(&s.arch),
                &s.spool,
                "other\n",
                &segment_file_name(1, 1, SEG),
                &s._d.path().join("x"),
                Duration::ZERO,
            )
            .unwrap();
            assert!(!other.start_helper && other.warnings[0].contains("serves another recovery"));
            fs::remove_dir_all(&s.data).unwrap();
            let summary = helper.join().unwrap().unwrap().unwrap();
            assert!(summary.why.contains("was removed"), "{summary:?}");
        });
    }

    #[test]
    fn a_killed_helpers_leftovers_are_not_used_and_are_cleared() {
        let s = setup(4);
        let dest = s.data.join("pg_wal/RECOVERYXLOG");
        let name = segment_file_name(1, 2, SEG);
        // Left by a helper that died: not served by a live helper, so not
        // taken, even with a matching name and digest.
        let f = s.spool.path(&format!("{FETCHING}{name}"));
        fs::write(&f, b"stale").unwrap();
        s.spool
            .publish(&f, &name, &crate::wal::checksum::sha256(b"stale"))
            .unwrap();
        let o = through_spool(
            &|| Ok(&s.arch),
            &s.spool,
            "data\narchive\n",
            &name,
            &dest,
            Duration::ZERO,
        )
        .unwrap();
        assert!(!o.from_spool && o.start_helper);
        assert_eq!(fs::read(&dest).unwrap(), content(1, 2));
        // The next helper clears them at start.
        let log = |_: &str| {};
        run_helper(&s.arch, &s.spool, &opts(&s, 1, 50), &log)
            .unwrap()
            .unwrap();
        assert!(ready(&s.spool).is_empty());
    }
}
