//! The archive-module entry points, for both ABIs:
//!
//! - PG15: `void _PG_archive_module_init(ArchiveModuleCallbacks *cb)` fills in
//!   `check_configured_cb`, `archive_file_cb`, `shutdown_cb` (no state).
//! - PG16–18: `const ArchiveModuleCallbacks *_PG_archive_module_init(void)`
//!   returns a static struct whose callbacks take an `ArchiveModuleState *`.
//!
//! Both call the same version-independent functions below. None of them may
//! raise an ERROR (on PG15/16 that kills the archiver): failures are WARNINGs
//! and a `false` return, so the archiver retries and stays up.

use std::ffi::{c_int, c_void, CStr};
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pgrx::prelude::*;
use walarch_core::archiving::archive_protocol::ArchiveOutcome;
use walarch_core::archiving::archiver::{archive_one, Archived, LeftoverSweep, Target};
use walarch_core::destination::Destination;

use crate::shmem::{self, PgHost};
use crate::{guc, warnings};

/// Crash leftovers are cleaned once per destination in this process.
static SWEEP: Mutex<LeftoverSweep> = Mutex::new(LeftoverSweep::new());

fn sweep(dest: &dyn Destination) {
    let mut sweep = SWEEP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = sweep.run_once(dest) {
        warnings::leftovers_removed(dest, &r);
    }
}

/// Set when the postmaster asks the archiver for its last round before
/// shutting down (SIGUSR2; pgarch.c keeps its own flag private). The
/// archiver then never probes a store known to be failing: one attempt on a
/// hung store costs a full request timeout, and the shutdown would wait.
static FINAL_ROUND: AtomicBool = AtomicBool::new(false);
static CHAINED: AtomicBool = AtomicBool::new(false);
/// PostgreSQL's own SIGUSR2 action, written once before ours is installed.
static mut PREVIOUS_USR2: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();

pub fn final_round() -> bool {
    FINAL_ROUND.load(Ordering::SeqCst)
}

extern "C" fn on_final_round(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    FINAL_ROUND.store(true, Ordering::SeqCst);
    // SAFETY: PREVIOUS_USR2 was initialised before this handler was
    // installed and is never written again; the previous handler is
    // PostgreSQL's (it sets its flag and the latch, and saves errno), called
    // the way its flags say it expects.
    unsafe {
        let prev = (*std::ptr::addr_of!(PREVIOUS_USR2)).assume_init_ref();
        let h = prev.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            return;
        }
        if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = std::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(c_int) = std::mem::transmute(h);
            f(sig);
        }
    }
}

/// Puts `on_final_round` in front of the archiver's SIGUSR2 handler (set up
/// before the module is loaded), once per process.
fn chain_final_round_signal() {
    if CHAINED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: sigaction(2) on this process's own SIGUSR2; the previous
    // action is stored before the new handler can run.
    unsafe {
        let mut prev: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut prev) != 0 {
            return;
        }
        (*std::ptr::addr_of_mut!(PREVIOUS_USR2)).write(prev);
        let mut act = prev;
        act.sa_sigaction = on_final_round as *const () as usize;
        act.sa_flags |= libc::SA_SIGINFO;
        libc::sigaction(libc::SIGUSR2, &act, std::ptr::null_mut());
    }
}

/// Called when the archiver loads the module.
fn startup() {
    chain_final_round_signal();
    // A wait on the object store gives up when the server shuts down.
    walarch_s3::runtime::set_interrupt_check(shutting_down);
    if let Ok(dest) = guc::destination() {
        sweep(&*dest);
    }
}

/// Read from any thread: only flags, no PostgreSQL call.
fn shutting_down() -> bool {
    // SAFETY: reads of a sig_atomic_t flag and of a pid set at start-up.
    unsafe { pg_sys::ShutdownRequestPending != 0 || libc::getppid() != pg_sys::PostmasterPid }
}

fn check_configured() -> bool {
    match guc::destination() {
        Ok(_) => true,
        Err(detail) => {
            set_check_errdetail(&detail);
            false
        }
    }
}

/// PG17+: the archiver prints `arch_module_check_errdetail_string` as the
/// DETAIL of its "archiving is not configured" WARNING. Before 17 there is no
/// such hook, so say it in a WARNING of our own.
#[cfg(any(feature = "pg17", feature = "pg18"))]
fn set_check_errdetail(detail: &str) {
    unsafe extern "C" {
        static mut arch_module_check_errdetail_string: *mut std::ffi::c_char;
    }
    let detail = std::ffi::CString::new(detail).unwrap_or_default();
    // SAFETY: the archiver reset it to NULL before calling us and only reads
    // it before the next check; the copy lives in its memory context.
    unsafe { arch_module_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) };
}

#[cfg(not(any(feature = "pg17", feature = "pg18")))]
fn set_check_errdetail(detail: &str) {
    warnings::warning(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "walarch_ext: archiving is not configured",
        Some(detail),
        Some(
            "Set walarch.archive_destination to a directory or an s3:// URL and reload the configuration.",
        ),
    );
}

/// Called when the archiver exits (at a clean shutdown, after its last
/// round): save the statistics for the next start.
fn shutdown() {
    shmem::save_stats();
}

/// Archives one file. `file` is the bare name, `path` its path relative to
/// the data directory (the archiver's working directory).
fn archive(file: &CStr, path: &CStr) -> bool {
    let (Ok(file), Ok(path)) = (file.to_str(), path.to_str()) else {
        warnings::warning(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            "WAL file name is not valid UTF-8",
            None,
            None,
        );
        return false;
    };
    let Ok(configured) = guc::configured() else {
        // check_configured already said so; the archiver will try again.
        return false;
    };
    // Cleaning needs the store: not while it is known to be failing.
    if !shmem::read(|s| s.breaker.is_open(configured.id)).unwrap_or(false) {
        sweep(&*configured.dest);
    }
    let view = guc::archive_view(&*configured.dest);
    let dest = &view;
    let target = Target {
        dest,
        id: configured.id,
        request_timeout: configured.request_timeout,
        budget: guc::budget(),
    };
    match archive_one(&PgHost, &target, file, Path::new(path)) {
        Ok(Archived::CopiedAhead { .. }) => {
            debug1!("walarch_ext: \"{file}\" was copied ahead by the worker");
            true
        }
        Ok(Archived::Inline(outcome)) => {
            match outcome {
                ArchiveOutcome::Archived {
                    bytes,
                    stored_bytes,
                    ..
                } => {
                    debug1!(
                        "walarch_ext: archived \"{file}\" ({bytes} bytes, {stored_bytes} stored)"
                    )
                }
                ArchiveOutcome::AlreadyArchived {
                    repaired_record, ..
                } => match repaired_record {
                    Some(w) => warnings::warn(&w, &archiving(file, dest)),
                    None => debug1!(
                        "walarch_ext: \"{file}\" was already archived with identical contents"
                    ),
                },
            }
            true
        }
        Ok(Archived::Dropped(d)) => {
            warnings::dropped(file, dest, &d);
            true
        }
        Err(e) => {
            warnings::warn(&e, &archiving(file, dest));
            false
        }
    }
}

/// The context of a report about `file`.
pub fn archiving(file: &str, dest: &dyn Destination) -> String {
    format!("While archiving \"{file}\" into \"{}\".", dest.describe())
}

#[cfg(feature = "pg15")]
mod abi {
    //! PG15: `postmaster/pgarch.h`, callbacks without state.
    use super::*;
    use pgrx::pg_sys;
    use std::ffi::c_char;

    #[pg_guard]
    unsafe extern "C-unwind" fn check_configured_cb() -> bool {
        check_configured()
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn archive_file_cb(file: *const c_char, path: *const c_char) -> bool {
        archive(CStr::from_ptr(file), CStr::from_ptr(path))
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn shutdown_cb() {
        shutdown();
    }

    #[pg_guard]
    #[unsafe(no_mangle)]
    pub unsafe extern "C-unwind" fn _PG_archive_module_init(
        cb: *mut pg_sys::ArchiveModuleCallbacks,
    ) {
        (*cb).check_configured_cb = Some(check_configured_cb);
        (*cb).archive_file_cb = Some(archive_file_cb);
        (*cb).shutdown_cb = Some(shutdown_cb);
        startup();
    }
}

#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
mod abi {
    //! PG16–18: `archive/archive_module.h`, identical in 16, 17 and 18 (pgrx's
    //! bindings do not include it, so it is declared here).
    use super::*;
    use std::ffi::{c_char, c_void};

    #[repr(C)]
    pub struct ArchiveModuleState {
        pub private_data: *mut c_void,
    }

    #[repr(C)]
    pub struct ArchiveModuleCallbacks {
        pub startup_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
        pub check_configured_cb:
            Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState) -> bool>,
        pub archive_file_cb: Option<
            unsafe extern "C-unwind" fn(
                *mut ArchiveModuleState,
                *const c_char,
                *const c_char,
            ) -> bool,
        >,
        pub shutdown_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
    }

    const _: () = assert!(std::mem::size_of::<ArchiveModuleState>() == 8);
    const _: () = assert!(std::mem::size_of::<ArchiveModuleCallbacks>() == 32);

    #[pg_guard]
    unsafe extern "C-unwind" fn startup_cb(_state: *mut ArchiveModuleState) {
        startup();
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn check_configured_cb(_state: *mut ArchiveModuleState) -> bool {
        check_configured()
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn archive_file_cb(
        _state: *mut ArchiveModuleState,
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        archive(CStr::from_ptr(file), CStr::from_ptr(path))
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn shutdown_cb(_state: *mut ArchiveModuleState) {
        shutdown();
    }

    static CALLBACKS: ArchiveModuleCallbacks = ArchiveModuleCallbacks {
        startup_cb: Some(startup_cb),
        check_configured_cb: Some(check_configured_cb),
        archive_file_cb: Some(archive_file_cb),
        shutdown_cb: Some(shutdown_cb),
    };

    #[pg_guard]
    #[unsafe(no_mangle)]
    pub extern "C-unwind" fn _PG_archive_module_init() -> *const ArchiveModuleCallbacks {
        &CALLBACKS
    }
}
