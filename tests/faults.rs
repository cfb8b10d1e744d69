//! Fault injection at every write, fsync, rename and cut of the event log and of its
//! compaction, with the `fail` crate's fail points (as TiKV tests its storage). The points
//! are compiled in only for tests (see Cargo.toml); each test holds a `FailScenario`, so the
//! tests of this file run one at a time and never see another's faults.
//!
//! The promises checked, each against `log::recover` of what is on disk afterwards:
//! - a failed write leaves no partial record behind: it is cut back before anything else is
//!   appended, the append is refused, and later appends are acknowledged and recovered;
//! - a failed fsync (or a failed cut) is fail-stop: nothing more is acknowledged, and every
//!   acknowledged record is recovered;
//! - a compaction that fails at any step before its rename leaves the old log whole and
//!   appendable; one that fails after it (the directory fsync) is fail-stop, and the log
//!   recovered is the compacted one.

use std::path::{Path, PathBuf};

use fail::FailScenario;
use throughline::store::log::{self, Log, Record};

fn rec(i: u64) -> Record {
    Record::line(1_000 + i, format!("{{\"n\":{i}}}").into_bytes())
}

fn numbers(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.wall_ms - 1_000).collect()
}

fn fresh_log(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("throughline-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("events.log")
}

/// A log holding records 0..n, all acknowledged.
fn log_with(path: &Path, n: u64) -> Log {
    let log = Log::open(path).unwrap();
    for i in 0..n {
        log.append(vec![rec(i)]).unwrap();
    }
    log
}

fn recovered(path: &Path) -> (Vec<u64>, u64) {
    let recovery = log::recover(path).unwrap();
    (numbers(&recovery.records), recovery.truncated_bytes)
}

#[test]
fn a_failed_write_is_cut_back_and_later_appends_are_recovered() {
    let scenario = FailScenario::setup();
    // nothing, a byte, part of the frame header, part of the payload, half of the record
    for written in ["0", "1", "5", "13", ""] {
        let path = fresh_log(&format!("write-{written}"));
        let log = log_with(&path, 3);
        fail::cfg("log::write", &format!("1*return({written})")).unwrap();
        assert!(log.append(vec![rec(3), rec(4)]).is_err(), "{written}");
        assert_eq!(log.failed(), None, "a failed write is not fail-stop");
        log.append(vec![rec(5)]).unwrap();
        drop(log);
        assert_eq!(
            recovered(&path),
            (vec![0, 1, 2, 5], 0),
            "{written} bytes written"
        );
        fail::remove("log::write");
    }
    scenario.teardown();
}

#[test]
fn a_failed_fsync_is_fail_stop_and_loses_nothing_acknowledged() {
    let scenario = FailScenario::setup();
    let path = fresh_log("fsync");
    let log = log_with(&path, 3);
    fail::cfg("log::fsync", "1*return").unwrap();
    assert!(log.append(vec![rec(3)]).is_err());
    let why = log.failed().expect("fail-stop after a failed fsync");
    assert!(why.contains("fsync"), "{why}");
    // fail-stop: nothing more is acknowledged, even once the disk behaves
    assert!(log.append(vec![rec(4)]).is_err());
    drop(log);
    let (records, _) = recovered(&path);
    // the unacknowledged record may or may not have reached the disk (its client retries)
    assert!(
        records == [0, 1, 2] || records == [0, 1, 2, 3],
        "{records:?}"
    );
    scenario.teardown();
}

#[test]
fn a_failed_write_that_cannot_be_cut_back_is_fail_stop_and_recovery_cuts_it() {
    let scenario = FailScenario::setup();
    let path = fresh_log("cut");
    let log = log_with(&path, 3);
    fail::cfg("log::write", "1*return(9)").unwrap();
    fail::cfg("log::cut", "1*return").unwrap();
    assert!(log.append(vec![rec(3)]).is_err());
    assert!(log.failed().is_some(), "fail-stop when the cut fails");
    assert!(log.append(vec![rec(4)]).is_err());
    drop(log);
    let (records, cut) = recovered(&path);
    assert_eq!(records, [0, 1, 2]);
    assert_eq!(cut, 9, "the partial record is cut at recovery");
    scenario.teardown();
}

/// Compacts `log` keeping the even records of 0..10.
fn compact_to_evens(log: &Log) -> std::io::Result<()> {
    log.compact(|records| {
        let before = records.len() as u64;
        let kept: Vec<Record> = records.into_iter().filter(|r| r.wall_ms % 2 == 0).collect();
        let reduced = before - kept.len() as u64;
        Ok((kept, reduced))
    })
    .map(|_| ())
}

#[test]
fn a_compaction_failing_before_its_rename_keeps_the_old_log_whole() {
    let scenario = FailScenario::setup();
    for point in [
        "compact::create",
        "compact::write",
        "compact::fsync",
        "swap::open",
        "swap::copy",
        "swap::fsync",
        "swap::rename",
    ] {
        let path = fresh_log(&point.replace("::", "-"));
        let log = log_with(&path, 10);
        fail::cfg(point, "1*return").unwrap();
        assert!(compact_to_evens(&log).is_err(), "{point}");
        assert_eq!(log.failed(), None, "{point}");
        log.append(vec![rec(10)]).unwrap();
        drop(log);
        let all: Vec<u64> = (0..=10).collect();
        assert_eq!(recovered(&path), (all, 0), "{point}");
        // and the next compaction, without the fault, goes through
        let log = Log::open(&path).unwrap();
        compact_to_evens(&log).unwrap();
        log.append(vec![rec(11)]).unwrap();
        drop(log);
        assert_eq!(
            recovered(&path),
            (vec![0, 2, 4, 6, 8, 10, 11], 0),
            "{point}"
        );
        fail::remove(point);
    }
    scenario.teardown();
}

#[test]
fn a_compaction_failing_after_its_rename_is_fail_stop_on_the_compacted_log() {
    let scenario = FailScenario::setup();
    let path = fresh_log("swap-sync-dir");
    let log = log_with(&path, 10);
    fail::cfg("swap::sync_dir", "1*return").unwrap();
    assert!(compact_to_evens(&log).is_err());
    assert!(log.failed().is_some(), "fail-stop after the rename");
    assert!(log.append(vec![rec(10)]).is_err());
    drop(log);
    assert_eq!(recovered(&path), (vec![0, 2, 4, 6, 8], 0));
    scenario.teardown();
}

#[test]
fn a_stopped_servers_compaction_failing_anywhere_keeps_a_whole_log() {
    let scenario = FailScenario::setup();
    for point in [
        "compact::create",
        "compact::write",
        "compact::fsync",
        "compact::rename",
    ] {
        let path = fresh_log(&format!("replace-{}", point.replace("::", "-")));
        drop(log_with(&path, 4));
        fail::cfg(point, "1*return").unwrap();
        assert!(log::replace(&path, &[rec(0), rec(2)]).is_err(), "{point}");
        assert_eq!(recovered(&path), (vec![0, 1, 2, 3], 0), "{point}");
        fail::remove(point);
    }
    // after the rename, only the directory's fsync can fail: the new log is in place
    let path = fresh_log("replace-sync-dir");
    drop(log_with(&path, 4));
    fail::cfg("compact::sync_dir", "1*return").unwrap();
    assert!(log::replace(&path, &[rec(0), rec(2)]).is_err());
    assert_eq!(recovered(&path), (vec![0, 2], 0));
    scenario.teardown();
}
