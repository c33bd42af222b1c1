//! Test doubles: a destination in memory and a host with a virtual clock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::archiving::host::Host;
use crate::archiving::shared_state::ArchiveState;
use crate::destination::local_directory::LocalDirectory;
use crate::destination::{Destination, Entry, ObjectEntry, ObjectWriter, Recorded, Stored};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::checksum::{hash_reader, Sha256Digest};

/// Bytes that differ from one offset to the next.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A destination whose record can be lost, as a crash between storing a file
/// and its record would leave it.
pub trait DamageRecord: Destination {
    fn drop_record(&self, name: &str);
}

impl DamageRecord for LocalDirectory {
    fn drop_record(&self, name: &str) {
        std::fs::remove_file(
            self.path()
                .join(crate::destination::local_directory::sidecar_name(name)),
        )
        .unwrap();
    }
}

/// The identity the tests' destinations are configured under.
pub fn here() -> crate::archiving::breaker::DestinationId {
    crate::archiving::breaker::DestinationId::of(&["memory", "here"])
}

/// `dest` as the destination configured now, under `here()`.
pub fn target(dest: &dyn Destination) -> crate::archiving::archiver::Target<'_> {
    crate::archiving::archiver::Target {
        dest,
        id: here(),
        request_timeout: None,
        budget: None,
    }
}

/// A store that does not answer in time: every operation fails as
/// unavailable.
pub struct Unreachable;

/// What `Unreachable` answers.
pub fn down() -> ArchiveError {
    ArchiveError::new(
        crate::support::error::ErrorKind::Unavailable,
        "could not store: timed out",
    )
}

impl Destination for Unreachable {
    fn describe(&self) -> String {
        "unreachable".into()
    }
    fn location(&self, name: &str) -> String {
        name.into()
    }
    fn store_new(&self, _: &str, _: &Path) -> Result<Stored, ArchiveError> {
        Err(down())
    }
    fn store_new_bytes(&self, _: &str, _: &[u8]) -> Result<Stored, ArchiveError> {
        Err(down())
    }
    fn recorded(&self, _: &str) -> Result<Recorded, ArchiveError> {
        Err(down())
    }
    fn write_record(&self, _: &str, _: &Sha256Digest) -> Result<(), ArchiveError> {
        Err(down())
    }
    fn make_durable(&self, _: &str) -> Result<(), ArchiveError> {
        Err(down())
    }
    fn size(&self, _: &str) -> Result<Option<u64>, ArchiveError> {
        Err(down())
    }
    fn open(&self, _: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        Err(down())
    }
    fn entries(&self) -> Result<Vec<Entry>, ArchiveError> {
        Err(down())
    }
    fn list(&self) -> Result<Vec<String>, ArchiveError> {
        Err(down())
    }
    fn remove(&self, _: &str) -> Result<(), ArchiveError> {
        Err(down())
    }
}

/// Files and their records in memory: the least a destination can be.
#[derive(Default)]
pub struct MemoryDestination {
    files: Mutex<BTreeMap<String, (Vec<u8>, Recorded)>>,
    /// What `store_new_sealed` recorded of the original.
    originals: Mutex<BTreeMap<String, crate::destination::compressed::Original>>,
    /// Streamed objects (`create_object`), shared with their writers.
    objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    /// When set, an object writer fails once it holds this many bytes.
    pub fail_objects_after: Mutex<Option<usize>>,
    /// Writers started and not yet finished or aborted.
    open_writers: Arc<AtomicUsize>,
    /// Objects whose name ends so are stored by `finish`, which then fails
    /// as if the store's reply were lost.
    pub lose_reply_of: Arc<Mutex<Option<String>>>,
    /// When set, `remove_object` fails (the store unreachable).
    pub fail_removes: Mutex<bool>,
}

impl MemoryDestination {
    /// Objects stored, by name.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.objects.lock().unwrap().clone()
    }

    pub fn open_writers(&self) -> usize {
        self.open_writers.load(Ordering::SeqCst)
    }
}

struct MemoryObject {
    name: String,
    data: Vec<u8>,
    fail_after: Option<usize>,
    objects: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    open: Arc<AtomicUsize>,
    lose_reply_of: Arc<Mutex<Option<String>>>,
}

impl ObjectWriter for MemoryObject {
    fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.data.extend_from_slice(data);
        if self.fail_after.is_some_and(|n| self.data.len() >= n) {
            return Err(down());
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64, ArchiveError> {
        self.open.fetch_sub(1, Ordering::SeqCst);
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(&self.name) {
            return Err(ArchiveError::new(
                ErrorKind::Conflict,
                format!("object \"{}\" already exists", self.name),
            ));
        }
        let n = self.data.len() as u64;
        let lost = (self.lose_reply_of.lock().unwrap().as_deref())
            .is_some_and(|suffix| self.name.ends_with(suffix));
        objects.insert(self.name, self.data);
        if lost {
            return Err(down());
        }
        Ok(n)
    }

    fn abort(self: Box<Self>) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DamageRecord for MemoryDestination {
    fn drop_record(&self, name: &str) {
        self.files.lock().unwrap().get_mut(name).unwrap().1 = Recorded::Missing;
    }
}

impl Destination for MemoryDestination {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn location(&self, name: &str) -> String {
        format!("memory:{name}")
    }

    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let data = std::fs::read(source).map_err(|e| ArchiveError::io("open file", source, &e))?;
        self.store_new_bytes(name, &data)
    }

    fn store_new_bytes(&self, name: &str, data: &[u8]) -> Result<Stored, ArchiveError> {
        let mut files = self.files.lock().unwrap();
        if files.contains_key(name) {
            return Ok(Stored::Exists);
        }
        let (bytes, sha256) = hash_reader(&mut &data[..]).unwrap();
        files.insert(name.to_string(), (data.to_vec(), Recorded::Digest(sha256)));
        Ok(Stored::Created {
            bytes,
            sha256,
            stored_bytes: bytes,
        })
    }

    fn store_new_sealed(
        &self,
        name: &str,
        data: &[u8],
        original: &crate::destination::compressed::Original,
    ) -> Result<Stored, ArchiveError> {
        let stored = self.store_new_bytes(name, data)?;
        if let Stored::Created { .. } = stored {
            self.originals
                .lock()
                .unwrap()
                .insert(name.to_string(), *original);
        }
        Ok(stored)
    }

    fn recorded_original(
        &self,
        name: &str,
    ) -> Result<Option<crate::destination::compressed::Original>, ArchiveError> {
        Ok(self.originals.lock().unwrap().get(name).copied())
    }

    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
        Ok(self
            .files
            .lock()
            .unwrap()
            .get(name)
            .map_or(Recorded::Missing, |f| f.1))
    }

    fn write_record(&self, name: &str, sha256: &Sha256Digest) -> Result<(), ArchiveError> {
        if let Some(f) = self.files.lock().unwrap().get_mut(name) {
            f.1 = Recorded::Digest(*sha256);
        }
        Ok(())
    }

    fn make_durable(&self, _name: &str) -> Result<(), ArchiveError> {
        Ok(())
    }

    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        Ok(self
            .files
            .lock()
            .unwrap()
            .get(name)
            .map(|f| f.0.len() as u64))
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        let data = self.files.lock().unwrap().get(name).map(|f| f.0.clone());
        Ok(data.map(|d| Box::new(std::io::Cursor::new(d)) as Box<dyn Read + Send>))
    }

    fn entries(&self) -> Result<Vec<Entry>, ArchiveError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|name| Entry {
                name,
                stored_at: None,
            })
            .collect())
    }

    fn list(&self) -> Result<Vec<String>, ArchiveError> {
        Ok(self.files.lock().unwrap().keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> Result<(), ArchiveError> {
        self.files.lock().unwrap().remove(name);
        self.originals.lock().unwrap().remove(name);
        Ok(())
    }

    fn create_object(&self, name: &str) -> Result<Box<dyn ObjectWriter>, ArchiveError> {
        self.open_writers.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(MemoryObject {
            name: name.to_string(),
            data: Vec::new(),
            fail_after: *self.fail_objects_after.lock().unwrap(),
            objects: Arc::clone(&self.objects),
            open: Arc::clone(&self.open_writers),
            lose_reply_of: Arc::clone(&self.lose_reply_of),
        }))
    }

    fn objects_under(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, d)| ObjectEntry {
                name: n.clone(),
                size: d.len() as u64,
                stored_at: None,
            })
            .collect())
    }

    fn open_object(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        let data = self.objects.lock().unwrap().get(name).cloned();
        Ok(data.map(|d| Box::new(std::io::Cursor::new(d)) as Box<dyn Read + Send>))
    }

    fn remove_object(&self, name: &str) -> Result<(), ArchiveError> {
        if *self.fail_removes.lock().unwrap() {
            return Err(down());
        }
        self.objects.lock().unwrap().remove(name);
        Ok(())
    }
}

type OnWait<'a> = Box<dyn FnMut(&mut ArchiveState, u32) + 'a>;

struct Shared<'a> {
    /// `None`: a process without shared memory.
    state: RefCell<Option<ArchiveState>>,
    dead: RefCell<HashSet<i32>>,
    start: Instant,
    elapsed: Cell<Duration>,
    waits: Cell<u32>,
    worker_wakes: Cell<u32>,
    archiver_wakes: Cell<u32>,
    shutdown: Cell<bool>,
    on_wait: RefCell<Option<OnWait<'a>>>,
    /// What `save_dropped` wrote last, and whether it fails.
    saved_dropped: RefCell<Option<Vec<crate::archiving::budget::DroppedRange>>>,
    save_fails: Cell<bool>,
    logged: RefCell<Vec<String>>,
}

/// A host whose clock moves only when it waits (or is advanced), so that
/// timeouts are tested without sleeping. Views made with `as_pid` share the
/// state, as processes share memory.
pub struct FakeHost<'a> {
    shared: Rc<Shared<'a>>,
    pid: i32,
}

impl Default for FakeHost<'_> {
    fn default() -> Self {
        Self::with_state(Some(ArchiveState::new(0)))
    }
}

impl<'a> FakeHost<'a> {
    fn with_state(state: Option<ArchiveState>) -> Self {
        FakeHost {
            shared: Rc::new(Shared {
                state: RefCell::new(state),
                dead: RefCell::default(),
                start: Instant::now(),
                elapsed: Cell::default(),
                waits: Cell::default(),
                worker_wakes: Cell::default(),
                archiver_wakes: Cell::default(),
                shutdown: Cell::default(),
                on_wait: RefCell::default(),
                saved_dropped: RefCell::default(),
                save_fails: Cell::default(),
                logged: RefCell::default(),
            }),
            pid: 1000,
        }
    }

    pub fn detached() -> Self {
        Self::with_state(None)
    }

    /// Another process on the same shared state.
    pub fn as_pid(&self, pid: i32) -> Self {
        FakeHost {
            shared: Rc::clone(&self.shared),
            pid,
        }
    }

    pub fn state(&self) -> ArchiveState {
        self.shared.state.borrow().clone().expect("no shared state")
    }

    /// Runs `f` at each wait with the wait's number (from 1).
    pub fn on_wait(&self, f: impl FnMut(&mut ArchiveState, u32) + 'a) {
        *self.shared.on_wait.borrow_mut() = Some(Box::new(f));
    }

    /// The process is asked to stop (PostgreSQL's SIGTERM).
    pub fn request_shutdown(&self) {
        self.shared.shutdown.set(true);
    }

    pub fn kill(&self, pid: i32) {
        self.shared.dead.borrow_mut().insert(pid);
    }

    pub fn advance(&self, d: Duration) {
        self.shared.elapsed.set(self.shared.elapsed.get() + d);
    }

    pub fn elapsed(&self) -> Duration {
        self.shared.elapsed.get()
    }

    pub fn waits(&self) -> u32 {
        self.shared.waits.get()
    }

    pub fn worker_wakes(&self) -> u32 {
        self.shared.worker_wakes.get()
    }

    pub fn archiver_wakes(&self) -> u32 {
        self.shared.archiver_wakes.get()
    }

    /// The dropped ranges last persisted (`None`: never saved).
    pub fn saved_dropped(&self) -> Option<Vec<crate::archiving::budget::DroppedRange>> {
        self.shared.saved_dropped.borrow().clone()
    }

    /// Makes persisting dropped ranges fail (a full data directory).
    pub fn fail_saves(&self, fail: bool) {
        self.shared.save_fails.set(fail);
    }

    pub fn logged(&self) -> Vec<String> {
        self.shared.logged.borrow().clone()
    }
}

impl Host for FakeHost<'_> {
    fn with_state<R>(&self, f: impl FnOnce(&mut ArchiveState) -> R) -> Option<R> {
        self.shared.state.borrow_mut().as_mut().map(f)
    }

    fn wait(&self, timeout: Duration) {
        let n = self.shared.waits.get() + 1;
        self.shared.waits.set(n);
        if let Some(f) = self.shared.on_wait.borrow_mut().as_mut() {
            if let Some(s) = self.shared.state.borrow_mut().as_mut() {
                f(s, n);
            }
        }
        self.advance(timeout);
    }

    fn wake_worker(&self) {
        self.shared
            .worker_wakes
            .set(self.shared.worker_wakes.get() + 1);
    }

    fn wake_archiver(&self) {
        self.shared
            .archiver_wakes
            .set(self.shared.archiver_wakes.get() + 1);
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn alive(&self, pid: i32) -> bool {
        !self.shared.dead.borrow().contains(&pid)
    }

    fn now(&self) -> Instant {
        self.shared.start + self.shared.elapsed.get()
    }

    fn timestamp(&self) -> i64 {
        self.shared.elapsed.get().as_micros() as i64
    }

    fn shutdown_requested(&self) -> bool {
        self.shared.shutdown.get()
    }

    fn save_dropped(
        &self,
        pending: &[crate::archiving::budget::DroppedRange],
    ) -> std::io::Result<()> {
        if self.shared.save_fails.get() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        *self.shared.saved_dropped.borrow_mut() = Some(pending.to_vec());
        Ok(())
    }

    fn log(&self, _level: crate::archiving::host::Note, message: &str) {
        self.shared.logged.borrow_mut().push(message.to_string());
    }
}
