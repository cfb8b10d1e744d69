//! Persisted erasure sets: for each `forget` request the engine has carried out, the salted
//! hashes of the identifiers it erased (the set S of SPEC section 6), keyed by the request's
//! line number in the event log. Compaction needs them to drop the erased events without
//! re-running the dataflow; they hold no raw value.
//!
//! Each entry is one framed record (length, CRC-32, payload) as in the event log, appended
//! and fsynced by the engine thread when the forget has been carried out.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::log::{frame, read_frames, recover_frames};

/// Erasure sets by the log line number of their `forget` request.
pub type ErasureSets = HashMap<u64, Vec<u128>>;

/// The append side of the erasures file.
pub struct ErasureLog {
    file: File,
    path: PathBuf,
}

impl ErasureLog {
    /// Opens the file at `path` for appending, after cutting a torn tail; returns it and
    /// what it holds.
    pub fn open(path: &Path) -> io::Result<(ErasureLog, ErasureSets)> {
        let (frames, _) = recover_frames(path, 1)?;
        let sets = decode_all(&frames.payloads);
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok((
            ErasureLog {
                file,
                path: path.to_path_buf(),
            },
            sets,
        ))
    }

    /// Durably records the erasure set of the forget request at log line `line`.
    pub fn record(&mut self, line: u64, hashes: &[u128]) -> io::Result<()> {
        let payload = bincode::serialize(&(line, hashes))
            .map_err(|e| io::Error::other(format!("cannot encode an erasure set: {e}")))?;
        let mut buf = Vec::with_capacity(payload.len() + 8);
        frame(&payload, &mut buf);
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the sets recorded so far (a torn tail, being written, is ignored, not cut).
pub fn load(path: &Path) -> io::Result<ErasureSets> {
    match File::open(path) {
        Ok(file) => Ok(decode_all(&read_frames(file, u64::MAX, 1)?.payloads)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ErasureSets::new()),
        Err(e) => Err(e),
    }
}

fn decode_all(payloads: &[Vec<u8>]) -> ErasureSets {
    payloads
        .iter()
        .filter_map(|p| bincode::deserialize::<(u64, Vec<u128>)>(p).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_survive_reopen_and_torn_tails() {
        let dir = std::env::temp_dir().join(format!("throughline-erasures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("erasures.log");
        {
            let (mut log, sets) = ErasureLog::open(&path).unwrap();
            assert!(sets.is_empty());
            log.record(7, &[1, 2]).unwrap();
            log.record(9, &[3]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(load(&path).unwrap().len(), 1, "a torn entry is ignored");
        let (_, sets) = ErasureLog::open(&path).unwrap();
        assert_eq!(sets, ErasureSets::from([(7, vec![1, 2])]));
    }
}
