//! Which timeline each coming segment is on, from a timeline history file:
//! what the prefetcher needs to fetch the files recovery will ask for next,
//! as PostgreSQL picks them (`XLogFileReadAnyTLI`: the newest timeline of
//! the target's history that had begun by the segment).

use crate::wal::walname::{segment_file_name, WalFileKind, WalFileName};

/// The timelines of one history, oldest first, each with the LSN it begins
/// at (0 for the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timelines {
    begins: Vec<(u32, u64)>,
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl Timelines {
    /// Timeline `tli` alone (no history file: timeline 1, or an unknown one).
    pub fn single(tli: u32) -> Timelines {
        Timelines {
            begins: vec![(tli, 0)],
        }
    }

    /// Parses the history file of timeline `tli` ("parentTLI<tab>switchpoint
    /// <tab>reason" lines, `#` comments, as PostgreSQL writes them); `None`
    /// when it is not one.
    pub fn parse(tli: u32, text: &str) -> Option<Timelines> {
        let mut begins = vec![];
        let mut begin = 0u64;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let parent: u32 = fields.next()?.parse().ok()?;
            let switchpoint = parse_lsn(fields.next()?)?;
            if begins.last().is_some_and(|&(t, _)| t >= parent) || parent >= tli {
                return None;
            }
            begins.push((parent, begin));
            begin = switchpoint;
        }
        begins.push((tli, begin));
        Some(Timelines { begins })
    }

    /// The newest timeline, whose history this is.
    pub fn target(&self) -> u32 {
        self.begins.last().map(|&(t, _)| t).unwrap_or(1)
    }

    pub fn contains(&self, tli: u32) -> bool {
        self.begins.iter().any(|&(t, _)| t == tli)
    }

    /// Where this history leaves timeline `tli` (the LSN at which the next
    /// timeline of the history begins); `None` when `tli` is the target or
    /// not in the history.
    pub fn leaves(&self, tli: u32) -> Option<u64> {
        let i = self.begins.iter().position(|&(t, _)| t == tli)?;
        self.begins.get(i + 1).map(|&(_, begin)| begin)
    }

    /// The timeline recovery reads segment `segno` from.
    pub fn timeline_of(&self, segno: u64, segment_size: u64) -> u32 {
        self.begins
            .iter()
            .rev()
            .find(|&&(_, begin)| begin / segment_size <= segno)
            .map(|&(t, _)| t)
            .unwrap_or(self.begins[0].0)
    }
}

/// The `depth` segments recovery will ask for after `requested`, following
/// `timelines` (which must contain the requested one's timeline; otherwise
/// the requested timeline alone is followed).
pub fn segments_after(
    requested: &str,
    segment_size: u64,
    depth: usize,
    timelines: &Timelines,
) -> Vec<String> {
    let Some(w) = WalFileName::parse(requested).filter(|w| w.kind == WalFileKind::Segment) else {
        return vec![];
    };
    if !segment_size.is_power_of_two() || segment_size < (1 << 20) {
        return vec![];
    }
    let single;
    let follow = if timelines.contains(w.timeline) {
        timelines
    } else {
        single = Timelines::single(w.timeline);
        &single
    };
    let segno = w.segno(segment_size);
    (segno + 1..)
        .take(depth)
        .map(|s| {
            // Never back to an older timeline than the one asked for.
            let tli = follow.timeline_of(s, segment_size).max(w.timeline);
            segment_file_name(tli, s, segment_size)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn parses_history_files() {
        let t = Timelines::parse(
            3,
            "1\t0/5000120\tafter restore point \"rp\"\n\n# comment\n2\t0/9000000\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(t.begins, vec![(1, 0), (2, 0x5000120), (3, 0x9000000)]);
        assert_eq!(t.target(), 3);
        assert!(t.contains(2) && !t.contains(4));
        assert_eq!(t.leaves(1), Some(0x5000120));
        assert_eq!(t.leaves(2), Some(0x9000000));
        assert_eq!(t.leaves(3), None);
        assert_eq!(t.leaves(4), None);
        assert_eq!(Timelines::parse(1, "").unwrap().begins, vec![(1, 0)]);
        for bad in ["x\t0/1\tr", "1\tzz\tr", "2\t0/1\tr", "1\t0/1\tr\n1\t0/2\tr"] {
            assert_eq!(Timelines::parse(2, bad), None, "{bad}");
        }
    }

    #[test]
    fn follows_the_history_across_switches() {
        // Timeline 2 begins in segment 5 (mid-segment), timeline 3 at the
        // start of segment 9.
        let t = Timelines::parse(3, "1\t0/5000120\tr\n2\t0/9000000\tr\n").unwrap();
        assert_eq!(
            segments_after("000000010000000000000003", SEG, 7, &t),
            vec![
                "000000010000000000000004",
                "000000020000000000000005",
                "000000020000000000000006",
                "000000020000000000000007",
                "000000020000000000000008",
                "000000030000000000000009",
                "00000003000000000000000A",
            ]
        );
        // Crossing a log boundary (256 segments of 16 MB per log).
        assert_eq!(
            segments_after("0000000300000000000000FF", SEG, 2, &t),
            vec!["000000030000000100000000", "000000030000000100000001"]
        );
    }

    #[test]
    fn without_a_matching_history_stays_on_the_requested_timeline() {
        let other = Timelines::parse(5, "1\t0/5000000\tr\n").unwrap();
        assert_eq!(
            segments_after("000000030000000000000010", SEG, 2, &other),
            vec!["000000030000000000000011", "000000030000000000000012"]
        );
        assert_eq!(
            segments_after(
                "00000001000000000000000E",
                64 << 20,
                2,
                &Timelines::single(1)
            ),
            vec!["00000001000000000000000F", "000000010000000000000010"]
        );
        // Not a segment, or a nonsense size: nothing to prefetch.
        assert!(segments_after("00000002.history", SEG, 4, &Timelines::single(2)).is_empty());
        assert!(
            segments_after("000000010000000000000001", 1000, 4, &Timelines::single(1)).is_empty()
        );
    }
}
