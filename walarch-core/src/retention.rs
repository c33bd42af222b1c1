//! Which archived WAL files a retention rule removes, and removing them.
//!
//! The archive is cut at one WAL position: every segment, `.partial` and
//! `.backup` file that logically precedes the cut goes, on every timeline
//! (compared by the log/segment part of the name, as pg_archivecleanup
//! does); everything at or after it stays, and `.history` files always stay.
//! Files go oldest first, each data before its record, so an expiry that
//! stops midway leaves a shorter archive without a hole, and never a record
//! without its file.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

use crate::destination::{Destination, Entry};
use crate::error::{ArchiveError, ErrorKind};
use crate::walname::{WalFileKind, WalFileName};

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The WAL the N most recent base backups need, and everything after.
    KeepBackups(u32),
    /// Everything from this segment on.
    Before(String),
    /// Everything from the oldest segment archived less than this long ago.
    OlderThan(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Remove,
    /// Not a WAL file name: never touched, reported.
    Leave,
}

impl Action {
    pub fn as_str(&self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (Action::Remove, true) => "remove",
            (Action::Remove, false) => "removed",
            (Action::Leave, _) => "left",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub walfile: String,
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The first segment kept (`None`: nothing to cut at, nothing removed).
    pub cut: Option<String>,
    /// Why the archive is cut there.
    pub why: String,
    /// Removals oldest first, then the names left alone.
    pub decisions: Vec<Decision>,
}

impl Plan {
    pub fn removals(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Remove)
    }
}

/// The log/segment part of a segment, `.partial` or `.backup` name
/// (`XLogFileName` without the timeline): what pg_archivecleanup compares.
fn position(name: &str) -> &str {
    name.get(8..24).unwrap_or_default()
}

/// Oldest first: by position, then timeline, then segment before its
/// `.partial` and `.backup` files.
fn wal_order(a: &(String, WalFileName), b: &(String, WalFileName)) -> Ordering {
    let rank = |k: WalFileKind| match k {
        WalFileKind::Segment => 0,
        WalFileKind::Partial => 1,
        WalFileKind::Backup => 2,
        WalFileKind::History => 3,
    };
    position(&a.0)
        .cmp(position(&b.0))
        .then(a.1.timeline.cmp(&b.1.timeline))
        .then(rank(a.1.kind).cmp(&rank(b.1.kind)))
        .then(a.0.cmp(&b.0))
}

fn refused(message: &str, detail: String) -> ArchiveError {
    ArchiveError::new(ErrorKind::Configuration, message).with_detail(detail)
}

/// The plan for `rule` over the archive's `entries` (WAL file names as the
/// archive holds them, whatever their form, and anything else found there).
/// `now` is the time `OlderThan` counts back from.
pub fn plan(entries: &[Entry], rule: &Rule, now: SystemTime) -> Result<Plan, ArchiveError> {
    let mut wal: Vec<(String, WalFileName)> = Vec::new();
    let mut foreign = Vec::new();
    for e in entries {
        match WalFileName::parse(&e.name) {
            // Never removed: recovery needs every timeline's history.
            Some(w) if w.kind == WalFileKind::History => {}
            Some(w) => wal.push((e.name.clone(), w)),
            None => foreign.push(e.name.clone()),
        }
    }
    wal.sort_by(wal_order);
    let mut backups: Vec<&str> = wal
        .iter()
        .filter(|(_, w)| w.kind == WalFileKind::Backup)
        .map(|(n, _)| n.as_str())
        .collect();
    // Newest first: by start position, then offset within the segment.
    backups.sort_by(|a, b| position(b).cmp(position(a)).then(b.cmp(a)));

    let (mut cut, mut why): (Option<String>, String) = match rule {
        Rule::KeepBackups(0) => {
            return Err(refused(
                "--keep-backups must be at least 1",
                "Keeping no base backup would leave nothing to recover from.".into(),
            ))
        }
        Rule::KeepBackups(n) => {
            if backups.is_empty() {
                return Err(refused(
                    "no base backup is recorded in the archive, so nothing is removed",
                    "--keep-backups counts the backup history files (.backup) that pg_basebackup and pg_backup_stop() archive; the archive holds none.".into(),
                )
                .with_hint("Take a base backup first, or use --before to name the first WAL file to keep."));
            }
            let kept = (*n as usize).min(backups.len());
            let oldest_kept = backups[kept - 1];
            (
                Some(oldest_kept[..24].to_string()),
                format!(
                    "before {}, where the oldest of the {kept} kept base backups starts ({oldest_kept})",
                    &oldest_kept[..24],
                ),
            )
        }
        Rule::Before(first) => match WalFileName::parse(first) {
            Some(w) if w.kind == WalFileKind::Segment => {
                (Some(first.clone()), format!("before {first}, as asked"))
            }
            _ => {
                return Err(ArchiveError::new(
                    ErrorKind::InvalidName,
                    format!("\"{first}\" is not a WAL segment file name"),
                )
                .with_hint("Give a name such as 000000010000000000000010."))
            }
        },
        Rule::OlderThan(age) => {
            let threshold = now.checked_sub(*age).unwrap_or(SystemTime::UNIX_EPOCH);
            // A file whose time is unknown counts as recent: kept.
            let recent = entries
                .iter()
                .filter(|e| e.stored_at.is_none_or(|t| t >= threshold))
                .filter_map(|e| {
                    let w = WalFileName::parse(&e.name)?;
                    (w.kind == WalFileKind::Segment).then(|| e.name.clone())
                })
                .min_by(|a, b| position(a).cmp(position(b)));
            let why = format!("archived more than {} ago", crate::time::describe(*age));
            match recent {
                Some(first) => (Some(first), why),
                // Every segment is older: all of them go.
                None => (None, why),
            }
        }
    };
    // Whatever the rule, the newest base backup stays recoverable.
    if !matches!(rule, Rule::KeepBackups(_)) {
        if let Some(newest) = backups.first() {
            let start = &newest[..24];
            if cut.as_deref().is_none_or(|c| position(c) > position(start)) {
                cut = Some(start.to_string());
                why = format!(
                    "{why}, but not from {start} on: the newest base backup ({newest}) needs it"
                );
            }
        }
    }
    let everything = cut.is_none();
    if everything && !wal.iter().any(|(_, w)| w.kind == WalFileKind::Segment) {
        return Ok(Plan {
            cut: None,
            why,
            decisions: leave(foreign),
        });
    }

    let mut decisions: Vec<Decision> = wal
        .iter()
        .filter(|(n, _)| cut.as_deref().is_none_or(|c| position(n) < position(c)))
        .map(|(n, _)| Decision {
            walfile: n.clone(),
            action: Action::Remove,
            reason: why.clone(),
        })
        .collect();
    decisions.extend(leave(foreign));
    Ok(Plan {
        cut,
        why,
        decisions,
    })
}

fn leave(names: Vec<String>) -> Vec<Decision> {
    names
        .into_iter()
        .map(|n| Decision {
            walfile: n,
            action: Action::Leave,
            reason: "not a WAL file name: left alone".into(),
        })
        .collect()
}

/// `archive_cleanup_command`: the files that logically precede
/// `restart_file` (`%r`), as pg_archivecleanup removes them: segments and
/// `.partial` files on every timeline, `.backup` files too when asked.
pub fn plan_cleanup(
    entries: &[Entry],
    restart_file: &str,
    backup_history: bool,
) -> Result<Plan, ArchiveError> {
    // pg_archivecleanup accepts the segment itself or its .partial/.backup.
    let w = WalFileName::parse(restart_file)
        .filter(|w| w.kind != WalFileKind::History)
        .ok_or_else(|| {
            ArchiveError::new(
                ErrorKind::InvalidName,
                format!("\"{restart_file}\" is not a WAL file name"),
            )
            .with_hint("archive_cleanup_command passes it as %r.")
        })?;
    let cut = restart_file[..24].to_string();
    let why = format!(
        "before {cut}, the oldest file the standby still needs (timeline {})",
        w.timeline
    );
    let mut wal: Vec<(String, WalFileName)> = entries
        .iter()
        .filter_map(|e| Some((e.name.clone(), WalFileName::parse(&e.name)?)))
        .filter(|(_, w)| match w.kind {
            WalFileKind::Segment | WalFileKind::Partial => true,
            WalFileKind::Backup => backup_history,
            WalFileKind::History => false,
        })
        .filter(|(n, _)| position(n) < position(&cut))
        .collect();
    wal.sort_by(wal_order);
    Ok(Plan {
        decisions: wal
            .into_iter()
            .map(|(n, _)| Decision {
                walfile: n,
                action: Action::Remove,
                reason: why.clone(),
            })
            .collect(),
        cut: Some(cut),
        why,
    })
}

/// Carries out `plan` on `dest`, oldest first, calling `done` after each
/// removal. Stops at the first failure: what was removed before it is a
/// prefix of the archive, so it stays without a hole.
pub fn execute(
    dest: &dyn Destination,
    plan: &Plan,
    mut done: impl FnMut(&Decision),
) -> Result<usize, ArchiveError> {
    let mut n = 0;
    for d in plan.removals() {
        dest.remove(&d.walfile)?;
        n += 1;
        done(d);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn entries(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .map(|n| Entry {
                name: n.to_string(),
                stored_at: None,
            })
            .collect()
    }

    fn removed(p: &Plan) -> Vec<&str> {
        p.removals().map(|d| d.walfile.as_str()).collect()
    }

    /// Timeline 1 up to segment 8, a switch to timeline 2 at segment 6 (TL1's
    /// 6 is a .partial), three backups at 2, 4 and 7.
    fn two_timelines() -> Vec<Entry> {
        entries(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000004.00000060.backup",
            "000000010000000000000005",
            "000000010000000000000006.partial",
            "00000002.history",
            "000000020000000000000006",
            "000000020000000000000007",
            "000000020000000000000007.00000028.backup",
            "000000020000000000000008",
            "README.txt",
            "00000001000000000000000G",
        ])
    }

    #[test]
    fn keep_backups_cuts_at_the_oldest_kept_backup_across_timelines() {
        let e = two_timelines();
        let p = plan(&e, &Rule::KeepBackups(2), at(T0)).unwrap();
        assert_eq!(p.cut.as_deref(), Some("000000010000000000000004"));
        assert_eq!(
            removed(&p),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
            ]
        );
        assert!(
            p.why.contains("000000010000000000000004.00000060.backup"),
            "{}",
            p.why
        );
        // The unparsable names are reported, never removed.
        let left: Vec<_> = p
            .decisions
            .iter()
            .filter(|d| d.action == Action::Leave)
            .map(|d| d.walfile.as_str())
            .collect();
        assert_eq!(left, ["README.txt", "00000001000000000000000G"]);

        let p = plan(&e, &Rule::KeepBackups(1), at(T0)).unwrap();
        assert_eq!(p.cut.as_deref(), Some("000000020000000000000007"));
        // Both timelines before 7 go, the .partial with them; the history
        // file stays.
        let r = removed(&p);
        assert_eq!(r.len(), 9, "{r:?}");
        assert!(r.contains(&"000000010000000000000006.partial"));
        assert!(r.contains(&"000000020000000000000006"));
        assert!(!r.iter().any(|n| n.ends_with(".history")));
        // Oldest first: positions never go down.
        let pos: Vec<_> = r.iter().map(|n| &n[8..24]).collect();
        assert!(pos.windows(2).all(|w| w[0] <= w[1]), "{r:?}");

        // More backups kept than there are: the WAL before the oldest goes.
        let p = plan(&e, &Rule::KeepBackups(9), at(T0)).unwrap();
        assert_eq!(removed(&p), ["000000010000000000000001"]);
    }

    #[test]
    fn no_backup_refuses_keep_backups() {
        let e = entries(&["000000010000000000000001", "000000010000000000000002"]);
        let err = plan(&e, &Rule::KeepBackups(1), at(T0)).unwrap_err();
        assert!(err.message.contains("no base backup"), "{err}");
        assert!(err.hint.is_some());
        assert!(plan(&e, &Rule::KeepBackups(0), at(T0)).is_err());
    }

    #[test]
    fn before_removes_what_precedes_but_never_the_newest_backups_wal() {
        let e = entries(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]);
        let p = plan(&e, &Rule::Before("000000010000000000000003".into()), at(T0)).unwrap();
        assert_eq!(
            removed(&p),
            ["000000010000000000000001", "000000010000000000000002"]
        );
        let e = two_timelines();
        let p = plan(&e, &Rule::Before("000000020000000000000008".into()), at(T0)).unwrap();
        assert_eq!(p.cut.as_deref(), Some("000000020000000000000007"));
        assert!(p.why.contains("newest base backup"), "{}", p.why);
        for bad in ["00000002.history", "000000010000000000000002.partial", "x"] {
            assert!(
                plan(&e, &Rule::Before(bad.into()), at(T0)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn older_than_cuts_at_the_oldest_recent_segment() {
        let mut e = entries(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]);
        for (i, x) in e.iter_mut().enumerate() {
            x.stored_at = Some(at(T0 - 86_400 * (4 - i as u64)));
        }
        // 2.5 days: files 1 and 2 (4 and 3 days old) go.
        let p = plan(&e, &Rule::OlderThan(Duration::from_secs(216_000)), at(T0)).unwrap();
        assert_eq!(
            removed(&p),
            ["000000010000000000000001", "000000010000000000000002"]
        );
        // Everything older: everything goes (no backup to protect).
        let p = plan(&e, &Rule::OlderThan(Duration::from_secs(60)), at(T0)).unwrap();
        assert_eq!(removed(&p).len(), 4);
        // A time that is unknown counts as recent.
        e[0].stored_at = None;
        let p = plan(&e, &Rule::OlderThan(Duration::from_secs(60)), at(T0)).unwrap();
        assert!(removed(&p).is_empty());
    }

    #[test]
    fn cleanup_follows_pg_archivecleanup() {
        let e = two_timelines();
        let p = plan_cleanup(&e, "000000020000000000000007", false).unwrap();
        let r = removed(&p);
        assert_eq!(r.len(), 7, "{r:?}");
        assert!(r.contains(&"000000010000000000000006.partial"));
        assert!(!r
            .iter()
            .any(|n| n.ends_with(".backup") || n.ends_with(".history")));
        let p = plan_cleanup(&e, "000000020000000000000007", true).unwrap();
        assert_eq!(removed(&p).len(), 9);
        // %r may name the .partial or .backup of the segment.
        let p = plan_cleanup(&e, "000000010000000000000004.00000060.backup", false).unwrap();
        assert_eq!(removed(&p).len(), 3);
        assert!(plan_cleanup(&e, "00000002.history", false).is_err());
        assert!(plan_cleanup(&e, "nonsense", false).is_err());
    }

    #[test]
    fn execute_removes_oldest_first_and_stops_at_a_failure() {
        use crate::testing::MemoryDestination;
        let dest = MemoryDestination::default();
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
        ];
        for n in names {
            dest.store_new_bytes(n, n.as_bytes()).unwrap();
        }
        let p = plan(
            &dest.entries().unwrap(),
            &Rule::Before(names[2].into()),
            at(T0),
        )
        .unwrap();
        let mut seen = vec![];
        let n = execute(&dest, &p, |d| seen.push(d.walfile.clone())).unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, &names[..2]);
        assert_eq!(dest.list().unwrap(), [names[2]]);
    }
}
