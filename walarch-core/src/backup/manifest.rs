//! PostgreSQL's `backup_manifest`, checked as `pg_verifybackup` checks a
//! plain-format backup: the manifest's own SHA-256, then every file it lists
//! for presence, size and checksum, and every file on disk for being listed
//! (but those pg_verifybackup ignores: `IGNORED`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier", default)]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<RawWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

#[derive(Debug, Deserialize)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

/// One of the manifest's `WAL-Ranges`: the WAL of `timeline` from `start`
/// to `end` that the backup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(rename = "Path", default)]
    path: Option<String>,
    #[serde(rename = "Encoded-Path", default)]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm", default)]
    algorithm: Option<String>,
    #[serde(rename = "Checksum", default)]
    checksum: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "NONE" => Algorithm::None,
            "CRC32C" => Algorithm::Crc32c,
            "SHA224" => Algorithm::Sha224,
            "SHA256" => Algorithm::Sha256,
            "SHA384" => Algorithm::Sha384,
            "SHA512" => Algorithm::Sha512,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ManifestFile {
    /// Relative to the data directory (`pg_tblspc/OID/...` for a tablespace).
    pub path: PathBuf,
    pub size: u64,
    pub algorithm: Algorithm,
    /// Lowercase hex; empty for `NONE`.
    pub checksum: String,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub version: u32,
    pub system_identifier: Option<u64>,
    pub files: Vec<ManifestFile>,
    pub wal_ranges: Vec<WalRange>,
}

impl Manifest {
    /// Checks the manifest's WAL ranges against the backup's start and stop
    /// (as `backup.json` records them): PostgreSQL writes them from the same
    /// start and stop, newest timeline first, so one range must begin at the
    /// start on the start timeline and one end at the stop on the stop
    /// timeline.
    pub fn check_wal_ranges(&self, start: (u32, u64), stop: (u32, u64)) -> Result<(), String> {
        let lsn = |l: u64| format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF);
        let starts = self
            .wal_ranges
            .iter()
            .any(|r| r.timeline == start.0 && r.start == start.1);
        let ends = self
            .wal_ranges
            .iter()
            .any(|r| r.timeline == stop.0 && r.end == stop.1);
        if starts && ends {
            return Ok(());
        }
        let shown: Vec<String> = self
            .wal_ranges
            .iter()
            .map(|r| format!("timeline {} {} to {}", r.timeline, lsn(r.start), lsn(r.end)))
            .collect();
        Err(format!(
            "the manifest's WAL ranges ({}) do not match backup.json (start {} on timeline {}, stop {} on timeline {})",
            if shown.is_empty() { "none".to_string() } else { shown.join(", ") },
            lsn(start.1),
            start.0,
            lsn(stop.1),
            stop.0
        ))
    }
}

/// Parses a manifest and checks its own checksum: the SHA-256 of every byte
/// up to and including the newline before the last line
/// (`verify_manifest_checksum` in parse_manifest.c).
pub fn parse(text: &[u8]) -> Result<Manifest, String> {
    let raw: RawManifest = serde_json::from_slice(text)
        .map_err(|e| format!("the backup manifest is not valid: {e}"))?;
    if !(1..=2).contains(&raw.version) {
        return Err(format!(
            "the backup manifest has version {}, which this walarch does not read",
            raw.version
        ));
    }
    let newlines: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    if newlines.len() < 2 {
        return Err("the backup manifest has no checksum line".into());
    }
    // As parse_manifest.c: the checksum line ends the file, with its newline.
    if text.last() != Some(&b'\n') {
        return Err("the backup manifest's last line is not newline-terminated".into());
    }
    let covered = &text[..newlines[newlines.len() - 2] + 1];
    let actual = hex(&Sha256::digest(covered));
    if !actual.eq_ignore_ascii_case(&raw.checksum) {
        return Err(format!(
            "the backup manifest's checksum does not match: recorded {}, actual {actual}",
            raw.checksum
        ));
    }
    let mut files = Vec::with_capacity(raw.files.len());
    for f in raw.files {
        let path = match (f.path, f.encoded_path) {
            (Some(p), None) => PathBuf::from(p),
            (None, Some(h)) => {
                PathBuf::from(OsString::from_vec(unhex(&h).ok_or_else(|| {
                    format!("invalid Encoded-Path \"{h}\" in the manifest")
                })?))
            }
            _ => return Err("a manifest entry needs exactly one of Path and Encoded-Path".into()),
        };
        if path.as_os_str().is_empty()
            || !path.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "the manifest lists \"{}\", which is not a path inside the data directory",
                path.display()
            ));
        }
        let name = f.algorithm.as_deref().unwrap_or("NONE");
        let algorithm = Algorithm::parse(name)
            .ok_or_else(|| format!("unknown checksum algorithm \"{name}\" in the manifest"))?;
        let checksum = f.checksum.unwrap_or_default().to_ascii_lowercase();
        if algorithm != Algorithm::None && unhex(&checksum).is_none_or(|b| b.is_empty()) {
            return Err(format!(
                "invalid checksum for \"{}\" in the manifest",
                path.display()
            ));
        }
        files.push(ManifestFile {
            path,
            size: f.size,
            algorithm,
            checksum,
        });
    }
    let mut wal_ranges = Vec::with_capacity(raw.wal_ranges.len());
    for r in raw.wal_ranges {
        let lsn = |s: &str| {
            crate::backup::restore::parse_lsn(s)
                .ok_or_else(|| format!("invalid LSN \"{s}\" in the manifest's WAL-Ranges"))
        };
        wal_ranges.push(WalRange {
            timeline: r.timeline,
            start: lsn(&r.start)?,
            end: lsn(&r.end)?,
        });
    }
    Ok(Manifest {
        version: raw.version,
        system_identifier: raw.system_identifier,
        files,
        wal_ranges,
    })
}

/// The checksum of `r` as the manifest writes it: CRC-32C as its four
/// bytes in memory order (little-endian here), SHA-2 as the digest.
pub fn checksum_of(r: &mut impl Read, algorithm: Algorithm) -> io::Result<(u64, String)> {
    enum State {
        None,
        Crc(u32),
        S224(Sha224),
        S256(Sha256),
        S384(Sha384),
        S512(Sha512),
    }
    let mut st = match algorithm {
        Algorithm::None => State::None,
        Algorithm::Crc32c => State::Crc(0),
        Algorithm::Sha224 => State::S224(Sha224::new()),
        Algorithm::Sha256 => State::S256(Sha256::new()),
        Algorithm::Sha384 => State::S384(Sha384::new()),
        Algorithm::Sha512 => State::S512(Sha512::new()),
    };
    // Below malloc's mmap threshold: reused, not mapped and zeroed anew per file.
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        n += k as u64;
        let b = &buf[..k];
        match &mut st {
            State::None => {}
            State::Crc(c) => *c = crc32c::crc32c_append(*c, b),
            State::S224(h) => h.update(b),
            State::S256(h) => h.update(b),
            State::S384(h) => h.update(b),
            State::S512(h) => h.update(b),
        }
    }
    let sum = match st {
        State::None => String::new(),
        State::Crc(c) => hex(&c.to_le_bytes()),
        State::S224(h) => hex(&h.finalize()),
        State::S256(h) => hex(&h.finalize()),
        State::S384(h) => hex(&h.finalize()),
        State::S512(h) => hex(&h.finalize()),
    };
    Ok((n, sum))
}

/// Checks every file the manifest lists under `pgdata` (tablespace files
/// through the `pg_tblspc` links), `jobs` at a time. Returns the problems
/// found, one line each, in the manifest's order; empty when all is well.
pub fn verify_files(pgdata: &Path, manifest: &Manifest, jobs: usize) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let problems: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, manifest.files.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = manifest.files.get(i) else {
                    break;
                };
                if let Some(p) = check_file(pgdata, f) {
                    problems
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, p));
                }
            });
        }
    });
    let mut p = problems.into_inner().unwrap_or_else(|e| e.into_inner());
    p.sort();
    p.into_iter().map(|(_, m)| m).collect()
}

/// What pg_verifybackup does not look at in a data directory: paths that
/// are these, or under them.
pub const IGNORED: [&str; 5] = [
    "backup_manifest",
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// The files under `pgdata` (links followed, as pg_verifybackup's `stat`
/// does: `pg_tblspc/OID` into each tablespace) that the manifest does not
/// list, and anything that is neither a file nor a directory; paths in
/// `IGNORED` or in `also_ignored` (and under them) are not looked at.
/// One line per problem, sorted.
pub fn unlisted_files(pgdata: &Path, manifest: &Manifest, also_ignored: &[PathBuf]) -> Vec<String> {
    let listed: std::collections::HashSet<&Path> =
        manifest.files.iter().map(|f| f.path.as_path()).collect();
    let ignored = |rel: &Path| {
        IGNORED.iter().any(|i| rel.starts_with(i))
            || also_ignored.iter().any(|i| rel.starts_with(i))
    };
    let mut problems = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = pgdata.join(&rel);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                problems.push(format!(
                    "could not open directory \"{}\": {e}",
                    dir.display()
                ));
                continue;
            }
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    problems.push(format!(
                        "could not read directory \"{}\": {err}",
                        dir.display()
                    ));
                    break;
                }
            };
            let r = rel.join(e.file_name());
            if ignored(&r) {
                continue;
            }
            match std::fs::metadata(e.path()) {
                Ok(m) if m.is_dir() => stack.push(r),
                Ok(m) if m.is_file() => {
                    if !listed.contains(r.as_path()) {
                        problems.push(format!(
                            "\"{}\" is present on disk but not in the manifest",
                            r.display()
                        ));
                    }
                }
                Ok(_) => problems.push(format!(
                    "\"{}\" is not a regular file or directory",
                    r.display()
                )),
                Err(err) => problems.push(format!(
                    "could not stat file or directory \"{}\": {err}",
                    r.display()
                )),
            }
        }
    }
    problems.sort();
    problems
}

fn check_file(pgdata: &Path, f: &ManifestFile) -> Option<String> {
    let path = pgdata.join(&f.path);
    let shown = f.path.display();
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some(format!(
                "\"{shown}\" is present in the manifest but not on disk"
            ))
        }
        Err(e) => return Some(format!("could not open file \"{}\": {e}", path.display())),
    };
    match file.metadata() {
        Ok(m) if !m.is_file() => return Some(format!("\"{shown}\" is not a file")),
        Ok(m) if m.len() != f.size => {
            return Some(format!(
                "\"{shown}\" has size {} on disk but size {} in the manifest",
                m.len(),
                f.size
            ))
        }
        Ok(_) => {}
        Err(e) => return Some(format!("could not stat file \"{}\": {e}", path.display())),
    }
    match checksum_of(&mut file, f.algorithm) {
        Err(e) => Some(format!("could not read file \"{}\": {e}", path.display())),
        Ok((n, _)) if n != f.size => Some(format!(
            "\"{shown}\" changed size while being read: {n} bytes read, {} in the manifest",
            f.size
        )),
        Ok((_, sum)) if sum != f.checksum => {
            Some(format!("checksum mismatch for file \"{shown}\""))
        }
        Ok(_) => None,
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest as PostgreSQL writes it, for `files` (path, content),
    /// with CRC-32C checksums.
    pub(crate) fn make(files: &[(&str, &[u8])], system_identifier: Option<u64>) -> Vec<u8> {
        let mut s = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": ");
        match system_identifier {
            Some(id) => s.push_str(&format!("2,\n\"System-Identifier\": {id},\n")),
            None => s.push_str("1,\n"),
        }
        s.push_str("\"Files\": [\n");
        for (i, (p, content)) in files.iter().enumerate() {
            let (_, sum) = checksum_of(&mut &content[..], Algorithm::Crc32c).unwrap();
            s.push_str(&format!(
                "{{ \"Path\": \"{p}\", \"Size\": {}, \"Last-Modified\": \"2026-12-05 14:45:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{sum}\" }}{}\n",
                content.len(),
                if i + 1 < files.len() { "," } else { "" }
            ));
        }
        s.push_str("],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000138\" }\n],\n");
        let sum = hex(&Sha256::digest(s.as_bytes()));
        s.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
        s.into_bytes()
    }

    #[test]
    fn crc32c_as_postgresql_writes_it() {
        // CRC-32C("123456789") = 0xE3069283, stored in memory order.
        let (n, sum) = checksum_of(&mut &b"123456789"[..], Algorithm::Crc32c).unwrap();
        assert_eq!((n, sum.as_str()), (9, "839206e3"));
        let (_, sum) = checksum_of(&mut &b"abc"[..], Algorithm::Sha224).unwrap();
        assert_eq!(
            sum,
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
    }

    #[test]
    fn parses_and_checks_its_own_checksum() {
        let m = make(&[("PG_VERSION", b"15\n"), ("base/1/1259", b"x")], Some(7));
        let p = parse(&m).unwrap();
        assert_eq!(p.files.len(), 2);
        assert_eq!(p.system_identifier, Some(7));
        assert_eq!(p.files[0].algorithm, Algorithm::Crc32c);
        let mut bad = m.clone();
        let i = bad.iter().position(|b| *b == b'1').unwrap();
        bad[i] = b'2';
        assert!(parse(&bad).unwrap_err().contains("checksum"), "tampered");
        let escape = make(&[("../x", b"")], None);
        assert!(parse(&escape).unwrap_err().contains("not a path"));
    }

    #[test]
    fn the_checksum_line_needs_its_newline_and_wal_ranges_are_read() {
        let m = make(&[("PG_VERSION", b"15\n")], Some(7));
        let p = parse(&m).unwrap();
        assert_eq!(
            p.wal_ranges,
            [WalRange {
                timeline: 1,
                start: 0x2000028,
                end: 0x2000138
            }]
        );
        assert!(p.check_wal_ranges((1, 0x2000028), (1, 0x2000138)).is_ok());
        let err = p
            .check_wal_ranges((1, 0x2000028), (2, 0x2000138))
            .unwrap_err();
        assert!(err.contains("timeline 1 0/2000028 to 0/2000138"), "{err}");
        assert!(p.check_wal_ranges((1, 0x3000028), (1, 0x2000138)).is_err());
        let cut = &m[..m.len() - 1];
        assert!(parse(cut).unwrap_err().contains("newline-terminated"));
    }

    #[test]
    fn files_not_in_the_manifest_are_reported_as_pg_verifybackup_does() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in ["a", "standby.signal", "postgresql.auto.conf", "lock"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
        std::fs::write(d.join("pg_wal/000000010000000000000001"), b"w").unwrap();
        std::fs::create_dir_all(d.join("base/1")).unwrap();
        std::fs::write(d.join("base/1/extra"), b"x").unwrap();
        std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        let m = parse(&make(&[("a", b"x")], None)).unwrap();
        let p = unlisted_files(d, &m, &[PathBuf::from("lock")]);
        assert_eq!(
            p,
            [
                "\"base/1/extra\" is present on disk but not in the manifest",
                "\"sock\" is not a regular file or directory",
            ]
        );
    }

    #[test]
    fn verifies_files_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"hello").unwrap();
        std::fs::write(tmp.path().join("b"), b"world").unwrap();
        std::fs::write(tmp.path().join("extra"), b"ignored").unwrap();
        let m = parse(&make(&[("a", b"hello"), ("b", b"World"), ("c", b"")], None)).unwrap();
        let p = verify_files(tmp.path(), &m, 2);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("checksum mismatch for file \"b\""), "{p:?}");
        assert!(p[1].contains("\"c\" is present in the manifest but not on disk"));
    }
}
