//! A file the server appends the change stream to (`serve --sink FILE`), one change line
//! of SPEC section 7 per line.
//!
//! Each group is written and fsynced before it counts as confirmed, and the sink's state
//! keeps the file's length at its confirmed position. A restart cuts the file back to that
//! length and the replay writes again what followed, so the file holds every change exactly
//! once, whatever the crash cut. A write that fails (a full disk) is cut back and retried
//! after a pause, while the views go on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::state::SinkState;
use super::{Destination, Group, Progress};

/// The change stream appended to a file.
pub struct FileDestination {
    path: PathBuf,
    file: File,
    /// The file's length once everything written so far is on disk.
    length: u64,
    /// The position of the last group on disk.
    confirmed: u64,
    written: u64,
}

impl FileDestination {
    /// Opens `path` for appending, cut back to the length `state` saved with its confirmed
    /// position (a file shorter than that, or none, starts again from nothing: the state
    /// is then reset, so the whole history is written).
    pub fn open(path: &Path, state: &mut SinkState) -> Result<FileDestination, String> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open sink {}: {e}", path.display()))?;
        let have = file
            .metadata()
            .map_err(|e| format!("cannot read sink {}: {e}", path.display()))?
            .len();
        if have < state.extra {
            eprintln!(
                "throughline: sink {}: shorter ({have} bytes) than what was confirmed ({} bytes): written again from the start",
                path.display(),
                state.extra
            );
            state.confirm(0, 0).map_err(|e| {
                format!("cannot reset the position of sink {}: {e}", path.display())
            })?;
        }
        file.set_len(state.extra)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot cut sink {} back: {e}", path.display()))?;
        Ok(FileDestination {
            path: path.to_path_buf(),
            file,
            length: state.extra,
            confirmed: state.confirmed,
            written: 0,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        fail::fail_point!("sink::file::write", |_| Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (injected)"
        )));
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(self.length))?;
        self.file.write_all(bytes)?;
        self.file.sync_data()
    }
}

impl Destination for FileDestination {
    fn deliver(&mut self, groups: &[Group]) -> Result<usize, String> {
        let mut bytes = Vec::new();
        let mut lines = 0;
        for change in groups.iter().flat_map(|g| &g.changes) {
            bytes.extend_from_slice(change.json().as_bytes());
            bytes.push(b'\n');
            lines += 1;
        }
        if !bytes.is_empty()
            && let Err(e) = self.append(&bytes)
        {
            // nothing of it counts: cut back what may have reached the file
            let _ = self.file.set_len(self.length);
            return Err(format!("cannot write {}: {e}", self.path.display()));
        }
        self.length += bytes.len() as u64;
        self.written += lines;
        if let Some(last) = groups.last() {
            self.confirmed = last.position;
        }
        Ok(groups.len())
    }

    fn progress(&mut self) -> Progress {
        Progress {
            confirmed: self.confirmed,
            extra: self.length,
            delivered: self.written,
            ..Progress::default()
        }
    }

    fn sends_again(&self) -> bool {
        false
    }

    fn finish(&mut self, _patience: Duration) -> Result<String, String> {
        Ok(format!(
            "{}: wrote {} change lines",
            self.path.display(),
            self.written
        ))
    }
}
