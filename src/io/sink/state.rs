//! What a sink of `serve` keeps in the data directory, so that a restart neither loses nor
//! garbles what it owes its destination (see the [parent module](super)):
//!
//! - `sink-KIND.position`: the destination's name, then `CONFIRMED EXTRA`: every group up
//!   to position `CONFIRMED` is durable at the destination (`EXTRA` is a file sink's
//!   length at that point). Rewritten atomically.
//! - `sink-KIND.sent`: the positions of the groups sent after it (framed like the event
//!   log, fsynced before the groups are sent), so the replay can end groups at exactly
//!   those positions and send them again as identical records.
//!
//! A state saved for another destination (the option now names another topic or file) is
//! not used: the new destination gets the whole history.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::store::data_dir::write_atomically;
use crate::store::log::{frame, recover_frames};

/// Sent positions kept in the file past the confirmed one before it is rewritten.
const REWRITE_AFTER: usize = 4096;

/// A sink's saved position (see the module docs).
#[derive(Debug)]
pub struct SinkState {
    position_path: PathBuf,
    sent_path: PathBuf,
    destination: String,
    /// Every group up to this position is durable at the destination (0: none yet).
    pub confirmed: u64,
    /// Saved with it: a file sink's length at that position.
    pub extra: u64,
    /// Positions of the groups sent after `confirmed`, in order.
    pub sent: Vec<u64>,
    /// Entries in the sent file (obsolete ones included).
    sent_entries: usize,
    sent_file: Option<File>,
}

impl SinkState {
    /// Loads the state of sink `kind` (`changes`, `upsert`) in data directory `dir` for
    /// `destination`; a fresh one when there is none, or when it was saved for another
    /// destination (said on stderr).
    pub fn load(dir: &Path, kind: &str, destination: &str) -> Result<SinkState, String> {
        let position_path = dir.join(format!("sink-{kind}.position"));
        let sent_path = dir.join(format!("sink-{kind}.sent"));
        let mut state = SinkState {
            position_path,
            sent_path,
            destination: destination.to_string(),
            confirmed: 0,
            extra: 0,
            sent: Vec::new(),
            sent_entries: 0,
            sent_file: None,
        };
        let text = match std::fs::read_to_string(&state.position_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(format!(
                    "cannot read {}: {e}",
                    state.position_path.display()
                ));
            }
        };
        let unreadable = || {
            format!(
                "{}: not a sink position (remove it to send the destination everything again)",
                state.position_path.display()
            )
        };
        let fresh = match text {
            None => true,
            Some(text) => {
                let mut lines = text.lines();
                let saved_for = lines.next().ok_or_else(unreadable)?;
                if saved_for != destination {
                    eprintln!(
                        "throughline: sink {destination}: a new destination (the saved position was {saved_for}'s): it gets the whole history"
                    );
                    true
                } else {
                    let numbers: Vec<u64> = lines
                        .next()
                        .ok_or_else(unreadable)?
                        .split_whitespace()
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|_| unreadable())?;
                    let [confirmed, extra] = numbers[..] else {
                        return Err(unreadable());
                    };
                    (state.confirmed, state.extra) = (confirmed, extra);
                    false
                }
            }
        };
        if fresh {
            match std::fs::remove_file(&state.sent_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", state.sent_path.display())),
            }
            // the position file names the destination the sent file is for: without it, a
            // restart before the first confirmation would take the groups sent as another
            // destination's and forget them (and then cut its replay elsewhere)
            state
                .confirm(0, 0)
                .map_err(|e| format!("cannot write {}: {e}", state.position_path.display()))?;
            return Ok(state);
        }
        let (frames, _) = recover_frames(&state.sent_path, 8)
            .map_err(|e| format!("cannot read {}: {e}", state.sent_path.display()))?;
        state.sent_entries = frames.payloads.len();
        state.sent = frames
            .payloads
            .iter()
            .filter_map(|p| p.get(..8)?.try_into().ok().map(u64::from_le_bytes))
            .filter(|p| *p > state.confirmed)
            .collect();
        state.sent.sort_unstable();
        state.sent.dedup();
        Ok(state)
    }

    /// Keeps the state within a log of `logged` records. A sink cannot have confirmed more
    /// than the log holds (the engine sees only fsynced records), unless the directory was
    /// restored from an older copy: then its later lines would take positions the sink
    /// believes delivered, so it starts afresh (said on stderr) and gets the whole history.
    pub fn within(&mut self, logged: u64) -> Result<(), String> {
        if self.confirmed > logged || self.sent.last().is_some_and(|p| *p > logged) {
            eprintln!(
                "throughline: sink {}: its saved position ({}) is past the log's {logged} records: it gets the whole history again",
                self.destination, self.confirmed
            );
            self.sent.clear();
            self.sent_entries = usize::MAX; // the next confirm rewrites the sent file
            self.confirm(0, 0)
                .map_err(|e| format!("cannot reset {}: {e}", self.position_path.display()))?;
        }
        Ok(())
    }

    /// Durably records that groups at `positions` (ascending) are about to be sent.
    pub fn record_sent(&mut self, positions: &[u64]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(positions.len() * 16);
        for p in positions {
            frame(&p.to_le_bytes(), &mut buf);
        }
        let file = match &mut self.sent_file {
            Some(f) => f,
            None => self.sent_file.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.sent_path)?,
            ),
        };
        file.write_all(&buf)?;
        file.sync_data()?;
        self.sent.extend_from_slice(positions);
        self.sent_entries += positions.len();
        Ok(())
    }

    /// Durably records that every group up to `position` is confirmed (with `extra`).
    pub fn confirm(&mut self, position: u64, extra: u64) -> io::Result<()> {
        let text = format!("{}\n{position} {extra}\n", self.destination);
        write_atomically(&self.position_path, text.as_bytes())?;
        (self.confirmed, self.extra) = (position, extra);
        self.sent.retain(|p| *p > position);
        if self.sent_entries > self.sent.len().saturating_add(REWRITE_AFTER) {
            let mut buf = Vec::with_capacity(self.sent.len() * 16);
            for p in &self.sent {
                frame(&p.to_le_bytes(), &mut buf);
            }
            self.sent_file = None;
            write_atomically(&self.sent_path, &buf)?;
            self.sent_entries = self.sent.len();
        }
        Ok(())
    }
}

/// The least confirmed position of every sink state saved in data directory `dir`
/// (`u64::MAX` when there is none): what `throughline compact` of a stopped server must
/// respect.
pub fn saved_confirmed(dir: &Path) -> Result<u64, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut least = u64::MAX;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(kind) = name
            .strip_prefix("sink-")
            .and_then(|n| n.strip_suffix(".position"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
        let destination = text.lines().next().unwrap_or_default();
        least = least.min(SinkState::load(dir, kind, destination)?.confirmed);
    }
    Ok(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "throughline-sink-state-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Confirmed and sent positions survive a reopen; sent ones at or below the confirmed
    /// one are dropped; another destination starts afresh.
    #[test]
    fn positions_survive_a_restart() {
        let dir = dir("restart");
        let mut state = SinkState::load(&dir, "changes", "kafka://b/t").unwrap();
        assert_eq!((state.confirmed, state.sent.len()), (0, 0));
        state.record_sent(&[3, 5, 9]).unwrap();
        state.confirm(5, 0).unwrap();
        state.record_sent(&[12]).unwrap();
        let again = SinkState::load(&dir, "changes", "kafka://b/t").unwrap();
        assert_eq!((again.confirmed, again.sent.clone()), (5, vec![9, 12]));
        // a torn last entry is cut, the rest kept
        let sent = dir.join("sink-changes.sent");
        let bytes = std::fs::read(&sent).unwrap();
        std::fs::write(&sent, &bytes[..bytes.len() - 3]).unwrap();
        let torn = SinkState::load(&dir, "changes", "kafka://b/t").unwrap();
        assert_eq!(torn.sent, vec![9]);
        let other = SinkState::load(&dir, "changes", "kafka://b/other").unwrap();
        assert_eq!((other.confirmed, other.sent.len()), (0, 0));
        assert!(!sent.exists());
    }

    /// A state past the end of the log (a directory restored from an older copy) starts
    /// afresh, its sent positions gone from the file too.
    #[test]
    fn a_state_past_the_log_starts_afresh() {
        let dir = dir("past");
        let mut state = SinkState::load(&dir, "changes", "t").unwrap();
        state.record_sent(&[4, 9]).unwrap();
        state.confirm(4, 0).unwrap();
        state.within(20).unwrap();
        assert_eq!((state.confirmed, state.sent.clone()), (4, vec![9]));
        state.within(3).unwrap();
        let again = SinkState::load(&dir, "changes", "t").unwrap();
        assert_eq!((again.confirmed, again.sent.len()), (0, 0));
    }

    /// The sent file is rewritten once it holds many confirmed entries.
    #[test]
    fn the_sent_file_stays_small() {
        let dir = dir("small");
        let mut state = SinkState::load(&dir, "upsert", "x").unwrap();
        for p in 1..=(REWRITE_AFTER as u64 + 10) {
            state.record_sent(&[p]).unwrap();
        }
        state.confirm(REWRITE_AFTER as u64 + 5, 0).unwrap();
        let len = std::fs::metadata(dir.join("sink-upsert.sent"))
            .unwrap()
            .len();
        assert_eq!(len, 5 * 16);
        let again = SinkState::load(&dir, "upsert", "x").unwrap();
        assert_eq!(again.sent.len(), 5);
    }
}
