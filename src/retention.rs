//! Retention: which snapshots a policy deletes, for `prune` and for schedules (`schedule add --keep-last`,
//! `--older-than`, and their remote counterparts), as k3s's `--etcd-snapshot-retention` does.

use crate::util::{Span, human_bytes};

/// Why each snapshot (newest first) is deleted; empty = kept.
pub fn deletions(
    sizes_newest_first: &[(jiff::Timestamp, u64)],
    now: jiff::Timestamp,
    keep_last: usize,
    older_than: Option<Span>,
    max_size: Option<u64>,
) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); sizes_newest_first.len()];
    if keep_last > 0 {
        for r in reasons.iter_mut().skip(keep_last) {
            r.push(format!("beyond the {keep_last} most recent"));
        }
    }
    if let Some(d) = older_than.filter(|d| !d.is_zero()) {
        let cutoff = now
            .as_second()
            .saturating_sub(i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX));
        for (i, (created, _)) in sizes_newest_first.iter().enumerate() {
            if created.as_second() < cutoff {
                reasons[i].push(format!("older than {d}"));
            }
        }
    }
    if let Some(max) = max_size.filter(|m| *m > 0) {
        let mut total: u64 = sizes_newest_first.iter().map(|(_, s)| s).sum();
        for i in (0..sizes_newest_first.len()).rev() {
            if total <= max {
                break;
            }
            total -= sizes_newest_first[i].1;
            reasons[i].push(format!("total over {}", human_bytes(max)));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ts(hours_ago: i64, now: jiff::Timestamp) -> jiff::Timestamp {
        jiff::Timestamp::from_second(now.as_second() - hours_ago * 3600).unwrap()
    }

    #[test]
    fn policies_and_their_union() {
        let now = jiff::Timestamp::now();
        // newest first: 1h, 10h, 100h, 200h old; 100 bytes each
        let snaps: Vec<_> = [1, 10, 100, 200].iter().map(|h| (ts(*h, now), 100)).collect();
        let deleted = |r: Vec<Vec<String>>| r.iter().map(|x| !x.is_empty()).collect::<Vec<_>>();
        assert_eq!(
            deleted(deletions(&snaps, now, 3, None, None)),
            [false, false, false, true]
        );
        assert_eq!(
            deleted(deletions(
                &snaps,
                now,
                0,
                Some(Span(Duration::from_secs(50 * 3600))),
                None
            )),
            [false, false, true, true]
        );
        assert_eq!(
            deleted(deletions(&snaps, now, 0, None, Some(250))),
            [false, false, true, true]
        );
        assert_eq!(
            deleted(deletions(&snaps, now, 0, None, Some(400))),
            [false, false, false, false]
        );
        // union: keep-last 3 deletes the oldest; max-size 350 deletes the oldest too; older-than 5h the rest but newest
        assert_eq!(
            deleted(deletions(
                &snaps,
                now,
                3,
                Some(Span(Duration::from_secs(5 * 3600))),
                Some(350)
            )),
            [false, true, true, true]
        );
        // zero values are inactive
        assert_eq!(
            deleted(deletions(&snaps, now, 0, Some(Span(Duration::ZERO)), Some(0))),
            [false, false, false, false]
        );
    }
}
