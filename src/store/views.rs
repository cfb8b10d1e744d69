//! `DIR/views.ndjson`: every change made to the views of a running server, in order, each
//! with the log position it took effect at, so that a restart (and its replay of the log)
//! applies each one after exactly the same lines and reproduces the same outputs.
//!
//! One JSON object per line: `{"version":N,"position":P,"time":T,"name":"V",
//! "definition":"[[view]]\n…"}` (`"definition":null` for a deletion), or, for a whole new
//! spec a rebuild switched to (`PUT /v1/spec`), `{"version":N,"position":P,"time":T,
//! "name":"","definition":null,"spec":"…"}`. The engine appends and
//! fsyncs the line before it makes the change (so no output ever shows a change a restart
//! would not make again); a torn last line (a crash while writing it) is dropped when the
//! file is read, as the change it held was never made.
//!
//! Compaction may fold retired lines on both sides of a change's position into one span;
//! the replay then makes the change before the span. The views' rows after the span are the
//! same either way (a view is a function of the profiles and its definition), and the
//! outputs in between were confirmed by every sink before compaction could fold them, so
//! nothing anyone sees differs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::edit;

/// One change of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// Its number, from 1.
    pub version: u64,
    /// The log lines taken before it took effect.
    pub position: u64,
    /// The engine time it took effect at.
    pub time: u64,
    /// The view's name.
    pub name: String,
    /// The view's definition (TOML of one `[[view]]` table), or `None` for a deletion.
    pub definition: Option<String>,
    /// A whole new spec (a rebuild's switch-over, `PUT /v1/spec`): it replaces the spec
    /// from this position on, and `name` and `definition` are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

impl ViewRecord {
    /// The spec `text` (named `file` in errors) once this change is made to it.
    pub fn apply(&self, text: &str, file: &str) -> Result<edit::Edited, String> {
        if let Some(whole) = &self.spec {
            let spec = crate::spec::Spec::parse(whole, file).map_err(|e| e.to_string())?;
            return Ok(edit::Edited {
                text: whole.clone(),
                spec,
            });
        }
        match &self.definition {
            Some(body) => edit::put_view(text, file, &self.name, body).map_err(|e| e.to_string()),
            None => edit::delete_view(text, file, &self.name),
        }
    }
}

/// The file of view changes, open for appending.
#[derive(Debug)]
pub struct ViewLog {
    path: PathBuf,
    file: File,
}

impl ViewLog {
    /// Opens (creating) the file at `path`: the log and the changes it holds, in order.
    pub fn open(path: &Path) -> Result<(ViewLog, Vec<ViewRecord>), String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut records = Vec::new();
        let mut kept = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            // the last line, torn by a crash: never acknowledged
            if !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<ViewRecord>(line.trim_end()) {
                Ok(record) => {
                    records.push(record);
                    kept += line.len();
                }
                Err(e) => {
                    return Err(format!(
                        "{}:{}: not a view change: {e}",
                        path.display(),
                        i + 1
                    ));
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if kept < text.len() {
            file.set_len(kept as u64)
                .map_err(|e| format!("cannot cut {}: {e}", path.display()))?;
        }
        Ok((
            ViewLog {
                path: path.to_path_buf(),
                file,
            },
            records,
        ))
    }

    /// Appends `record` durably.
    pub fn append(&mut self, record: &ViewRecord) -> Result<(), String> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| format!("cannot write a view change: {e}"))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_read_back_and_a_torn_last_line_is_dropped() {
        let dir = std::env::temp_dir().join(format!("tl-views-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("views.ndjson");
        let record = ViewRecord {
            version: 1,
            position: 12,
            time: 1_767_225_600_000,
            name: "v".into(),
            definition: Some("[[view]]\nname = \"v\"\ninternal = true\nfields = []\n".into()),
            spec: None,
        };
        let (mut log, read) = ViewLog::open(&path).unwrap();
        assert!(read.is_empty());
        log.append(&record).unwrap();
        drop(log);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"version\":2,\"posi").unwrap();
        let (_, read) = ViewLog::open(&path).unwrap();
        assert_eq!(read, vec![record.clone()]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        std::fs::write(&path, "nonsense\n").unwrap();
        assert!(
            ViewLog::open(&path)
                .unwrap_err()
                .contains(":1: not a view change")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
