//! `raftkit-inspect DATA_DIR [--group G]`: checks a kv-server data directory offline (stop the
//! node first, or accept that what it has not written yet is not seen) and says what is
//! damaged, changing nothing: the WAL's unreadable stretches and, per group, its log range, hard
//! state, entries whose payload fails its checksum and indexes no readable record holds; every
//! snapshot file verified whole. `--group G` also lists G's live entries.
//!
//! Exit status: 0 if nothing is damaged, 1 if something is, 2 if the directory cannot be read.

#![allow(clippy::print_stdout)] // An operator's tool: its report is its output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut group = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--group" => match args.next().and_then(|g| g.parse().ok()) {
                Some(g) => group = Some(g),
                None => return usage("--group needs a group id"),
            },
            "-h" | "--help" => return usage(""),
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            other => return usage(&format!("unexpected argument {other}")),
        }
    }
    let Some(dir) = dir else { return usage("DATA_DIR is required") };
    match run(&dir, group) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(why) => {
            eprintln!("raftkit-inspect: {why}");
            ExitCode::from(2)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    if !why.is_empty() {
        eprintln!("raftkit-inspect: {why}");
    }
    eprintln!("usage: raftkit-inspect DATA_DIR [--group G]   (a kv-server --data-dir)");
    ExitCode::from(2)
}

/// Prints the report; returns whether everything is healthy.
fn run(dir: &Path, dump: Option<u64>) -> Result<bool, String> {
    let mut healthy = true;
    let wal_dir = dir.join("wal");
    if wal_dir.is_dir() {
        let report = raft_wal::inspect::inspect_with(&wal_dir, dump).map_err(|e| e.to_string())?;
        println!(
            "wal {}: {} segments, {} records read",
            wal_dir.display(),
            report.segments.len(),
            report.records
        );
        for (path, why) in &report.bad_segments {
            println!("  DAMAGED segment header {}: {why}", path.display());
        }
        for u in &report.unreadable {
            println!(
                "  DAMAGED {} bytes {}..{}: {} (reading resumes after it)",
                u.path.display(),
                u.offset,
                u.resumes_at,
                u.reason
            );
        }
        for why in &report.votes_unreadable {
            println!("  note: a copy of the votes is unreadable ({why}); the other one is used");
        }
        for (id, g) in &report.groups {
            let hs = g.hard_state.map_or("none".to_owned(), |h| {
                format!("term {} vote {:?} commit {}", h.term, h.vote, h.commit)
            });
            let copy =
                g.votes_copy.map_or("none".to_owned(), |(t, v)| format!("term {t} vote {v:?}"));
            println!(
                "  group {id}: entries {}..={} (base term {}), hard state {hs}, its copy {copy}",
                g.base.0 + 1,
                g.last_index,
                g.base.1
            );
            for (lo, hi) in &g.damaged {
                println!("    DAMAGED entries {lo}..={hi}: payload checksum mismatch");
            }
            for (lo, hi) in &g.missing {
                println!("    MISSING entries {lo}..={hi}: in an unreadable stretch");
            }
        }
        for e in &report.dump {
            println!(
                "    entry {} term {} {:?} {} bytes{}",
                e.index,
                e.term,
                e.kind,
                e.len,
                if e.intact { "" } else { " DAMAGED" }
            );
        }
        healthy &= report.is_healthy();
    } else {
        println!("wal {}: none (another log store, or not a data directory)", wal_dir.display());
    }
    let snap_dir = dir.join("snapshots");
    if let Ok(entries) = std::fs::read_dir(&snap_dir) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect();
        files.sort();
        println!("snapshots {}: {} files", snap_dir.display(), files.len());
        for path in files {
            match raft_snapshot::verify_file(&path) {
                Ok(m) => println!(
                    "  ok {}: group {} index {} term {}, {} bytes",
                    path.display(),
                    m.group,
                    m.index,
                    m.term,
                    m.size
                ),
                Err(e) => {
                    healthy = false;
                    println!("  DAMAGED {}: {e}", path.display());
                }
            }
        }
    }
    println!("{}", if healthy { "healthy" } else { "DAMAGED" });
    Ok(healthy)
}
