//! The server's data directory and what lives in it:
//!
//! - `events.log`: every received line, framed and checksummed (see [`super::log`]);
//! - `erasures.log`: the salted hashes each carried-out `forget` erased (see
//!   [`super::erasures`]);
//! - `salt`: 16 random bytes keying those hashes (created once);
//! - `dataflow.toml`: the dataflow spec the server last ran with, views changed while
//!   running included (compaction applies it);
//! - `views.ndjson`: the changes made to the views while running, each with the log
//!   position it took effect at (see [`super::views`]);
//! - `dead_letters.ndjson`: dead letters, rewritten from the log at every start;
//! - `LOCK`: held by the process using the directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::log::sync_dir;

/// An opened, locked data directory.
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and locks it for this process.
    pub fn open(root: &Path) -> Result<DataDir, String> {
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => format!(
                "{} is in use by another throughline process (a running server compacts with POST /v1/compact)",
                root.display()
            ),
            std::fs::TryLockError::Error(e) => {
                format!("cannot lock {}: {e}", lock_path.display())
            }
        })?;
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The event log.
    pub fn log(&self) -> PathBuf {
        self.root.join("events.log")
    }

    /// The persisted erasure sets.
    pub fn erasures(&self) -> PathBuf {
        self.root.join("erasures.log")
    }

    /// The changes made to the views while running ([`super::views`]).
    pub fn views(&self) -> PathBuf {
        self.root.join("views.ndjson")
    }

    /// The dead letters file.
    pub fn dead_letters(&self) -> PathBuf {
        self.root.join("dead_letters.ndjson")
    }

    /// The spec the server runs with, views changed while running included.
    pub fn dataflow(&self) -> PathBuf {
        self.root.join("dataflow.toml")
    }

    /// The key of the suppression hashes: read, or created (random) on first use.
    pub fn salt(&self) -> Result<u128, String> {
        let path = self.root.join("salt");
        let mut bytes = [0u8; 16];
        match File::open(&path) {
            Ok(mut f) => {
                f.read_exact(&mut bytes)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                return Ok(u128::from_le_bytes(bytes));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        let salt = random_u128();
        self.write_atomically("salt", &salt.to_le_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(salt)
    }

    /// The spec text the directory's log was last served with, if any.
    pub fn stored_spec(&self) -> Result<Option<String>, String> {
        match std::fs::read_to_string(self.dataflow()) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.dataflow().display())),
        }
    }

    /// Records the spec text the log is now served with.
    pub fn store_spec(&self, text: &str) -> Result<(), String> {
        self.write_atomically("dataflow.toml", text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.dataflow().display()))
    }

    /// Writes `name` via a temporary file and a rename, fsynced.
    fn write_atomically(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomically(&self.root.join(name), bytes)
    }
}

/// Writes `path` via a temporary file beside it and a rename, fsynced: after a crash it
/// holds the old bytes or the new ones.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    let mut f = File::create(&temp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&temp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// 128 random bits from the operating system, or (without `/dev/urandom`) from the clock
/// and process id.
fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u128::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    xxhash_rust::xxh3::xxh3_128(
        &[
            nanos.to_le_bytes(),
            u128::from(std::process::id()).to_le_bytes(),
        ]
        .concat(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_salt_and_spec() {
        let root = std::env::temp_dir().join(format!("throughline-datadir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::open(&root).unwrap();
        let err = DataDir::open(&root).err().unwrap_or_default();
        assert!(err.contains("in use"), "{err}");
        let salt = dir.salt().unwrap();
        assert_eq!(dir.salt().unwrap(), salt, "the salt is kept");
        assert_eq!(dir.stored_spec().unwrap(), None);
        dir.store_spec("x = 1\n").unwrap();
        assert_eq!(dir.stored_spec().unwrap().as_deref(), Some("x = 1\n"));
        drop(dir);
        assert!(DataDir::open(&root).is_ok(), "unlocked when dropped");
    }
}
