//! Plain-text tables of admin replies and verify reports.

use std::fmt::Write as _;

use reserva_engine::verify::VerifyReport;

use super::proto;

/// Columns padded to their widest cell; numbers right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut parts = Vec::with_capacity(cells.len());
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let numeric = !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_digit() || ".,-".contains(ch));
            parts.push(if numeric {
                format!("{c:>w$}")
            } else {
                format!("{c:<w$}")
            });
        }
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(
        &mut out,
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for row in rows {
        line(&mut out, row);
    }
    out
}

/// Bytes as B / KiB / MiB / GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Microseconds as µs / ms / s.
pub fn micros(us: u64) -> String {
    match us {
        0 => "-".into(),
        1..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{:03}s", s, ms % 1000),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `reserva status`.
pub fn status(s: &proto::StatusReply) -> String {
    let mut out = String::new();
    let t = s.totals.unwrap_or_default();
    let _ = writeln!(out, "node        {} (reserva {})", s.node_id, s.version);
    let _ = writeln!(out, "uptime      {}", duration_ms(s.uptime_ms));
    let _ = writeln!(out, "recovery    {}", duration_ms(s.recovery_ms));
    let _ = writeln!(out, "durability  --fsync {}", s.fsync);
    let _ = writeln!(out, "listen      {}", s.listen);
    let _ = writeln!(out, "data        {}", s.data_dir);
    let _ = writeln!(out, "shard map   version {}", s.shard_map_version);
    let _ = writeln!(
        out,
        "totals      {} ops, {} errors, {} shed, {} live reservations ({} expired), {} skus, {} orders, {} log, {} moves, {} poisoned shards\n",
        t.ops,
        t.errors,
        t.shed,
        t.reservations_live,
        t.reservations_expired,
        t.skus,
        t.orders,
        bytes(t.log_bytes),
        t.shard_moves,
        t.poisoned_shards
    );
    let rows: Vec<Vec<String>> = s
        .cores
        .iter()
        .map(|c| {
            vec![
                c.core.to_string(),
                c.shards.to_string(),
                format!("{:.1}", c.ops_per_sec),
                c.queue_depth.to_string(),
                c.addr.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["core", "shards", "ops/s", "queue", "addr"], &rows));
    let journals: Vec<proto::JournalStats> = s.cores.iter().filter_map(|c| c.journal).collect();
    if !journals.is_empty() {
        out.push('\n');
        out.push_str(&journal_table(&journals));
    }
    out
}

/// The commit journal of every core: counters since start, and rates over
/// the admin API's window.
pub fn journal_table(journals: &[proto::JournalStats]) -> String {
    let rows: Vec<Vec<String>> = journals
        .iter()
        .map(|j| {
            vec![
                j.core.to_string(),
                j.frames.to_string(),
                j.records.to_string(),
                bytes(j.bytes),
                j.barriers.to_string(),
                format!("{:.1}", j.records_per_barrier),
                format!("{:.1}", j.barriers_per_sec),
                format!("{}/s", bytes(j.bytes_per_sec as u64)),
                j.full.to_string(),
                j.checkpoints.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "journal",
            "frames",
            "records",
            "bytes",
            "barriers",
            "records/barrier",
            "barriers/s",
            "write rate",
            "full",
            "checkpoints",
        ],
        &rows,
    )
}

/// `reserva shards` / `reserva top`: one line with every core's journal
/// (bytes written, barriers/s).
pub fn journal_line(journals: &[proto::JournalStats]) -> String {
    let cores: Vec<String> = journals
        .iter()
        .map(|j| {
            format!(
                "core {}: {} written, {:.1} barriers/s",
                j.core,
                bytes(j.bytes),
                j.barriers_per_sec
            )
        })
        .collect();
    format!("journal  {}\n", cores.join(" | "))
}

/// How `reserva shards` sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Shard,
    Ops,
    Queue,
    Log,
    Hot,
}

/// Sorts shards: by the key, largest first (by shard number for `Shard`).
pub fn sort(shards: &mut [proto::ShardInfo], by: SortBy) {
    let hot = |s: &proto::ShardInfo| s.hot_skus.first().map_or(0, |h| h.hits);
    match by {
        SortBy::Shard => shards.sort_by_key(|s| s.shard),
        SortBy::Ops => shards.sort_by(|a, b| {
            b.ops_per_sec
                .total_cmp(&a.ops_per_sec)
                .then(a.shard.cmp(&b.shard))
        }),
        SortBy::Queue => shards.sort_by(|a, b| {
            b.queue_depth
                .cmp(&a.queue_depth)
                .then(a.shard.cmp(&b.shard))
        }),
        SortBy::Log => {
            shards.sort_by(|a, b| b.log_bytes.cmp(&a.log_bytes).then(a.shard.cmp(&b.shard)))
        }
        SortBy::Hot => shards.sort_by(|a, b| hot(b).cmp(&hot(a)).then(a.shard.cmp(&b.shard))),
    }
}

/// `reserva shards` / `reserva top`: one row per shard.
pub fn shards(shards: &[proto::ShardInfo]) -> String {
    let rows: Vec<Vec<String>> = shards
        .iter()
        .map(|s| {
            let hot = s
                .hot_skus
                .iter()
                .take(3)
                .map(|h| format!("{}({})", h.sku, h.hits))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                s.shard.to_string(),
                s.core.to_string(),
                format!("{:.1}", s.ops_per_sec),
                s.queue_depth.to_string(),
                micros(s.p99_apply_us),
                micros(s.p99_commit_us),
                bytes(s.log_bytes),
                s.lsn.to_string(),
                s.last_snapshot_lsn.to_string(),
                s.reservations_live.to_string(),
                if s.poisoned {
                    format!("POISONED {hot}")
                } else {
                    hot
                },
            ]
        })
        .collect();
    table(
        &[
            "shard",
            "core",
            "ops/s",
            "queue",
            "p99 apply",
            "p99 commit",
            "log",
            "lsn",
            "snap lsn",
            "live res",
            "hot skus",
        ],
        &rows,
    )
}

/// `reserva shard move`.
pub fn moved(m: &proto::MoveShardReply) -> String {
    format!(
        "shard {} moved from core {} to core {}: shard map version {}, {} queued requests handed over, paused {}\n",
        m.shard,
        m.from_core,
        m.to_core,
        m.map_version,
        m.handed_over,
        micros(m.paused_us)
    )
}

/// `reserva rebalance`.
pub fn rebalance(r: &proto::RebalanceReply, dry_run: bool) -> String {
    let mut out = String::new();
    let loads = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(i, l)| format!("core {i}: {l:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "ops/s before: {}", loads(&r.load_before));
    if r.moves.is_empty() {
        let _ = writeln!(out, "balanced: no move needed");
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .moves
        .iter()
        .map(|m| {
            vec![
                m.shard.to_string(),
                m.from_core.to_string(),
                m.to_core.to_string(),
                format!("{:.1}", m.ops_per_sec),
            ]
        })
        .collect();
    out.push_str(&table(&["shard", "from", "to", "ops/s"], &rows));
    let _ = writeln!(out, "ops/s after:  {}", loads(&r.load_after));
    let _ = writeln!(
        out,
        "{}",
        if dry_run {
            "dry run: nothing moved".to_string()
        } else {
            format!("applied; shard map version {}", r.map_version)
        }
    );
    out
}

/// `reserva snapshot` / `reserva compact`.
pub fn shard_results(results: &[proto::ShardResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.shard.to_string(),
                r.lsn.to_string(),
                bytes(r.log_bytes_before),
                bytes(r.log_bytes_after),
                if r.error.is_empty() {
                    "ok".into()
                } else {
                    r.error.clone()
                },
            ]
        })
        .collect();
    table(
        &["shard", "lsn", "log before", "log after", "result"],
        &rows,
    )
}

/// `reserva verify`: faults (with shard, file and offset), warnings, a summary.
pub fn verify(r: &VerifyReport) -> String {
    let mut out = String::new();
    let records: u64 = r.shards.iter().map(|s| s.records_replayed).sum();
    let matched: usize = r.shards.iter().map(|s| s.snapshots_matched).sum();
    for f in &r.faults {
        let _ = writeln!(
            out,
            "FAULT {} shard {} file {} offset {}{}: {}",
            f.kind.name(),
            f.shard.map_or("-".into(), |s| s.to_string()),
            f.file.display(),
            f.offset.map_or("-".into(), |o| o.to_string()),
            f.lsn.map_or(String::new(), |l| format!(" lsn {l}")),
            f.detail
        );
    }
    for w in &r.warnings {
        let _ = writeln!(
            out,
            "warning shard {} file {} offset {}: {}",
            w.shard.map_or("-".into(), |s| s.to_string()),
            w.file.display(),
            w.offset.map_or("-".into(), |o| o.to_string()),
            w.detail
        );
    }
    for j in &r.journals {
        let _ = writeln!(
            out,
            "journal {}: {}",
            j.dir.display(),
            if j.readable {
                format!(
                    "{} segments, {} frames, {} records{}",
                    j.segments,
                    j.frames,
                    j.records,
                    if j.torn.is_some() {
                        ", a torn last frame ignored"
                    } else {
                        ""
                    }
                )
            } else {
                "unreadable (see the faults)".to_string()
            }
        );
    }
    let pending: Vec<String> = r
        .shards
        .iter()
        .filter(|s| s.journal_pending > 0)
        .map(|s| format!("shard {}: {}", s.shard, s.journal_pending))
        .collect();
    if !pending.is_empty() {
        const LISTED: usize = 16;
        let more = pending.len().saturating_sub(LISTED);
        let _ = writeln!(
            out,
            "journal records the next start appends to shard logs: {} in {} shards ({}{})",
            r.journal_pending(),
            pending.len(),
            pending[..pending.len().min(LISTED)].join(", "),
            if more > 0 {
                format!(", and {more} more shards")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "{}: {} shards, {} records replayed, {} snapshots checked against the log, {} journals, {} journal records pending, {} faults, {} warnings",
        if r.is_ok() { "OK" } else { "FAILED" },
        r.shards.len(),
        records,
        matched,
        r.journals.len(),
        r.journal_pending(),
        r.faults.len(),
        r.warnings.len()
    );
    out
}

/// `reserva verify --output json`.
pub fn verify_json(r: &VerifyReport) -> serde_json::Value {
    use serde_json::json;
    json!({
        "ok": r.is_ok(),
        "data_dir": r.data_dir.display().to_string(),
        "journal_pending": r.journal_pending(),
        "journals": r.journals.iter().map(|j| json!({
            "dir": j.dir.display().to_string(),
            "readable": j.readable,
            "segments": j.segments,
            "frames": j.frames,
            "records": j.records,
            "torn": j.torn.as_ref().map(|t| json!({
                "segment": t.segment.display().to_string(),
                "offset": t.offset,
                "reason": t.reason,
            })),
        })).collect::<Vec<_>>(),
        "faults": r.faults.iter().map(|f| json!({
            "kind": f.kind.name(),
            "shard": f.shard,
            "file": f.file.display().to_string(),
            "offset": f.offset,
            "lsn": f.lsn,
            "detail": f.detail,
        })).collect::<Vec<_>>(),
        "warnings": r.warnings.iter().map(|w| json!({
            "shard": w.shard,
            "file": w.file.display().to_string(),
            "offset": w.offset,
            "detail": w.detail,
        })).collect::<Vec<_>>(),
        "shards": r.shards.iter().map(|s| json!({
            "shard": s.shard,
            "segments": s.segments,
            "snapshots": s.snapshots,
            "first_lsn": s.first_lsn,
            "last_lsn": s.last_lsn,
            "replayed_from": s.replayed_from,
            "records_replayed": s.records_replayed,
            "snapshots_matched": s.snapshots_matched,
            "journal_records": s.journal_records,
            "journal_pending": s.journal_pending,
            "checksum": format!("{:016x}", s.checksum),
        })).collect::<Vec<_>>(),
    })
}
