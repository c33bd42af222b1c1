//! The module's settings. `walarch.archive_directory` is validated by a check
//! hook so a bad value is refused when it is set (ALTER SYSTEM, reload,
//! start-up) with a DETAIL saying why, instead of failing at archive time.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use walarch_core::local_directory::LocalDirectory;

pub static ARCHIVE_DIRECTORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

pub fn define() {
    // SAFETY: the check hook is guarded and never panics across FFI.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"walarch.archive_directory",
            c"Directory into which WAL files are archived.",
            c"An absolute path to an existing directory the server can write. Empty means archiving is not configured.",
            &ARCHIVE_DIRECTORY,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY,
            Some(check_archive_directory),
            None,
            None,
        );
    }
}

/// After every `walarch.*` setting is defined: from then on a misspelt one
/// is an error, and placeholders for names we do not define are removed (so
/// this must come last, or our own settings from postgresql.conf vanish).
pub fn reserve_prefix() {
    // SAFETY: called from _PG_init with a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"walarch".as_ptr()) };
}

/// The configured destination; `None` when archiving is not configured.
pub fn destination() -> Option<LocalDirectory> {
    archive_directory().map(|dir| LocalDirectory::new(dir, file_create_mode()))
}

/// PostgreSQL's file creation mode (common/file_perm.h): 0600, or 0640 with
/// group access (initdb -g).
fn file_create_mode() -> u32 {
    unsafe extern "C" {
        static pg_file_create_mode: std::ffi::c_int;
    }
    // SAFETY: a plain int the server set at start-up.
    unsafe { pg_file_create_mode as u32 }
}

/// The configured archive directory; `None` when unset or empty.
pub fn archive_directory() -> Option<PathBuf> {
    let v = ARCHIVE_DIRECTORY.get()?;
    let s = v.to_str().ok()?;
    if s.is_empty() {
        None
    } else {
        Some(PathBuf::from(s))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_archive_directory(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // Empty is the default and means "not configured"; check_configured stops
    // archiving until it is set.
    if newval.is_null() || (*newval).is_null() {
        return true;
    }
    let value = CStr::from_ptr(*newval).to_string_lossy();
    if value.is_empty() {
        return true;
    }
    match walarch_core::archive_dir::validate(&value) {
        Ok(()) => true,
        Err(problem) => {
            let detail = CString::new(problem.detail()).unwrap();
            // GUC_check_errdetail(): the GUC machinery prints and frees it.
            pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
            false
        }
    }
}

pub static COPY_AHEAD: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static PARALLEL_COPIES: GucSetting<i32> = GucSetting::<i32>::new(4);

/// The copy-ahead worker's settings (only meaningful when preloaded, but
/// defined everywhere so that SHOW and ALTER SYSTEM work in any process).
pub fn define_worker_settings() {
    GucRegistry::define_bool_guc(
        c"walarch.copy_ahead",
        c"Copies ready WAL files into the archive ahead of the archiver.",
        c"Needs walarch_ext in shared_preload_libraries. When off, the archiver's calls copy every file themselves.",
        &COPY_AHEAD,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"walarch.parallel_copies",
        c"How many WAL files the copy-ahead worker copies at once.",
        c"",
        &PARALLEL_COPIES,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
}
