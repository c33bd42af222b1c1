//! WAL file names as PostgreSQL's archiver hands them out, and their order.
//!
//! The archiver archives `.history` files first, then everything else in name
//! order (pgarch.c). Names are validated strictly because they become paths in
//! the archive directory: nothing with a slash, a dot-dot or stray characters.

use std::cmp::Ordering;

/// The longest file name the archiver can pass (MAX_XFN_CHARS in pgarch.c is
/// 40; backup history names are the longest we accept, 24 + 1 + 8 + 7 = 40).
pub const MAX_WAL_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// `000000010000000000000001`: a completed segment.
    Segment,
    /// `000000010000000000000001.partial`: the last segment of an old timeline.
    Partial,
    /// `00000002.history`: a timeline history file.
    History,
    /// `000000010000000000000001.00000028.backup`: a backup history file.
    Backup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFileName {
    pub kind: WalFileKind,
    pub timeline: u32,
    /// For segments, partials and backups: the two 8-hex halves of the name.
    pub log: u32,
    pub seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn segment_parts(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() != 24 {
        return None;
    }
    Some((hex8(&s[0..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl WalFileName {
    /// Parses a name the archiver may pass; `None` for anything else.
    pub fn parse(name: &str) -> Option<WalFileName> {
        if let Some(tli) = name.strip_suffix(".history") {
            let timeline = hex8(tli)?;
            return Some(WalFileName {
                kind: WalFileKind::History,
                timeline,
                log: 0,
                seg: 0,
            });
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = segment_parts(seg)?;
            return Some(WalFileName {
                kind: WalFileKind::Partial,
                timeline,
                log,
                seg,
            });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            // 24 hex segment, '.', 8 hex offset
            let (seg, offset) = rest.split_at_checked(24)?;
            let offset = offset.strip_prefix('.')?;
            hex8(offset)?;
            let (timeline, log, seg) = segment_parts(seg)?;
            return Some(WalFileName {
                kind: WalFileKind::Backup,
                timeline,
                log,
                seg,
            });
        }
        let (timeline, log, seg) = segment_parts(name)?;
        Some(WalFileName {
            kind: WalFileKind::Segment,
            timeline,
            log,
            seg,
        })
    }

    /// The segment number for a given segment size (`XLogFromFileName`).
    pub fn segno(&self, wal_segment_size: u64) -> u64 {
        let per_log = 0x1_0000_0000u64 / wal_segment_size;
        self.log as u64 * per_log + self.seg as u64
    }
}

/// True when `name` is a file PostgreSQL archives (and so safe as a path
/// component in the archive directory).
pub fn is_archivable_name(name: &str) -> bool {
    WalFileName::parse(name).is_some()
}

/// The form a WAL file is stored in: as it is, compressed (`.zst`, see
/// `compressed`), encrypted (`.age`, see `sealed`), or both (`.zst.age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Form {
    pub compressed: bool,
    pub encrypted: bool,
}

impl Form {
    pub const PLAIN: Form = Form {
        compressed: false,
        encrypted: false,
    };
    pub const ZST: Form = Form {
        compressed: true,
        encrypted: false,
    };
    pub const AGE: Form = Form {
        compressed: false,
        encrypted: true,
    };
    pub const ZST_AGE: Form = Form {
        compressed: true,
        encrypted: true,
    };
    /// Every form, the plain one first.
    pub const ALL: [Form; 4] = [Form::PLAIN, Form::ZST, Form::AGE, Form::ZST_AGE];

    fn suffix(self) -> &'static str {
        match (self.compressed, self.encrypted) {
            (false, false) => "",
            (true, false) => ".zst",
            (false, true) => ".age",
            (true, true) => ".zst.age",
        }
    }
}

/// Whether files of `kind` are compressed: segments and `.partial` files.
/// History and backup files are a few hundred bytes of text.
fn compressible(kind: WalFileKind) -> bool {
    matches!(kind, WalFileKind::Segment | WalFileKind::Partial)
}

/// What a stored name holds: the WAL file's name, and the form it is
/// stored in. Only segments and `.partial` files have a compressed form;
/// every WAL file may be encrypted.
pub fn stored_form(name: &str) -> Option<(&str, Form)> {
    let (rest, encrypted) = match name.strip_suffix(crate::destination::sealed::SUFFIX) {
        Some(r) => (r, true),
        None => (name, false),
    };
    let (wal, compressed) = match rest.strip_suffix(crate::destination::compressed::SUFFIX) {
        Some(w) => (w, true),
        None => (rest, false),
    };
    let kind = WalFileName::parse(wal)?.kind;
    (!compressed || compressible(kind)).then_some((
        wal,
        Form {
            compressed,
            encrypted,
        },
    ))
}

/// The name of `walfile` stored in `form`; `None` when files of its kind
/// have no such form (or it is no WAL file name).
pub fn form_name(walfile: &str, form: Form) -> Option<String> {
    let kind = WalFileName::parse(walfile)?.kind;
    (!form.compressed || compressible(kind)).then(|| format!("{walfile}{}", form.suffix()))
}

/// The name of `walfile`'s compressed form, for the files that have one.
pub fn compressed_name(walfile: &str) -> Option<String> {
    form_name(walfile, Form::ZST)
}

/// The archiver's order: `.history` files first, then by name.
pub fn archive_order(a: &str, b: &str) -> Ordering {
    let ha = a.ends_with(".history");
    let hb = b.ends_with(".history");
    hb.cmp(&ha).then_with(|| a.cmp(b))
}

/// Builds a segment file name (`XLogFileName`).
pub fn segment_file_name(timeline: u32, segno: u64, wal_segment_size: u64) -> String {
    let per_log = 0x1_0000_0000u64 / wal_segment_size;
    format!(
        "{:08X}{:08X}{:08X}",
        timeline,
        segno / per_log,
        segno % per_log
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms() {
        let seg = "000000010000000000000001";
        assert_eq!(stored_form(seg), Some((seg, Form::PLAIN)));
        assert_eq!(stored_form(&format!("{seg}.zst")), Some((seg, Form::ZST)));
        assert_eq!(stored_form(&format!("{seg}.age")), Some((seg, Form::AGE)));
        assert_eq!(
            stored_form(&format!("{seg}.zst.age")),
            Some((seg, Form::ZST_AGE))
        );
        assert_eq!(
            stored_form("00000002.history.age"),
            Some(("00000002.history", Form::AGE))
        );
        assert_eq!(stored_form("00000002.history.zst.age"), None);
        assert_eq!(stored_form(&format!("{seg}.age.zst")), None);
        assert_eq!(stored_form(&format!("{seg}.age.age")), None);
        for f in Form::ALL {
            let n = form_name(seg, f).unwrap();
            assert_eq!(stored_form(&n), Some((seg, f)));
        }
        assert_eq!(form_name("00000002.history", Form::ZST_AGE), None);
        assert_eq!(
            form_name("00000002.history", Form::AGE).as_deref(),
            Some("00000002.history.age")
        );
        assert_eq!(
            stored_form(&format!("{seg}.partial.zst")),
            Some((&*format!("{seg}.partial"), Form::ZST))
        );
        assert_eq!(stored_form("00000002.history.zst"), None);
        assert_eq!(stored_form(&format!("{seg}.00000028.backup.zst")), None);
        assert_eq!(stored_form(&format!("{seg}.zst.zst")), None);
        assert_eq!(stored_form(&format!("{seg}.sha256")), None);
        assert_eq!(compressed_name(seg), Some(format!("{seg}.zst")));
        assert_eq!(compressed_name("00000002.history"), None);
    }

    #[test]
    fn parses_every_kind() {
        let s = WalFileName::parse("0000000100000002000000AB").unwrap();
        assert_eq!(
            (s.kind, s.timeline, s.log, s.seg),
            (WalFileKind::Segment, 1, 2, 0xAB)
        );
        let p = WalFileName::parse("000000010000000000000003.partial").unwrap();
        assert_eq!(p.kind, WalFileKind::Partial);
        let h = WalFileName::parse("0000000A.history").unwrap();
        assert_eq!((h.kind, h.timeline), (WalFileKind::History, 10));
        let b = WalFileName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!((b.kind, b.seg), (WalFileKind::Backup, 2));
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000001",
            "00000001000000000000000g",
            "00000001000000000000000a", // PostgreSQL writes upper case
            "../00000001000000000000",
            "000000010000000000000001/x",
            "000000010000000000000001.partial.tmp",
            "0000001.history",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.backup",
            "archive_status",
            ".walarch-tmp.000000010000000000000001.1.1",
        ] {
            assert!(WalFileName::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn history_first_then_name_order() {
        let mut v = vec![
            "000000020000000000000003",
            "000000010000000000000002",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003.partial",
            "00000003.history",
        ];
        v.sort_by(|a, b| archive_order(a, b));
        assert_eq!(
            v,
            vec![
                "00000002.history",
                "00000003.history",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003.partial",
                "000000020000000000000003",
            ]
        );
    }

    #[test]
    fn segno_round_trips_for_any_segment_size() {
        for size_mb in [1u64, 16, 64, 1024] {
            let size = size_mb << 20;
            for segno in [0u64, 1, 255, 4096, 123_456] {
                let name = segment_file_name(1, segno, size);
                assert_eq!(
                    WalFileName::parse(&name).unwrap().segno(size),
                    segno,
                    "{name}"
                );
            }
        }
        assert_eq!(
            segment_file_name(1, 0x100, 16 << 20),
            "000000010000000100000000"
        );
    }
}
