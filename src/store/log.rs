//! The durable event log: every received line, appended and fsynced before it is
//! acknowledged.
//!
//! Framing: `[u32 LE payload length][u32 LE CRC-32 of payload][payload]`, where the payload
//! is `[u64 LE wall clock ms at receipt][line bytes]`. The wall clock is kept so a replay
//! applies the far-future rule exactly as it was applied live. A record whose header or
//! payload is cut short, or whose checksum does not match, ends the log: recovery truncates
//! it there and reports what it dropped.
//!
//! Appends go through one writer thread that batches whatever is waiting, writes it, fsyncs
//! once and then acknowledges every record of the batch (group commit), so throughput does
//! not collapse to one fsync per event.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::io::source::{Batch, Message};

/// Largest payload a record may hold (a line of 1 MiB plus the wall clock, with room).
pub const MAX_PAYLOAD: usize = (1 << 20) + 64;

/// One logged line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The wall clock (epoch ms) when the line was received.
    pub wall_ms: u64,
    /// The line, as received (without `\n`).
    pub line: Vec<u8>,
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let len = 8 + self.line.len();
        let mut payload = Vec::with_capacity(len);
        payload.extend_from_slice(&self.wall_ms.to_le_bytes());
        payload.extend_from_slice(&self.line);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Intact records, in order.
    pub records: Vec<Record>,
    /// Bytes cut off a torn or corrupt tail (0 when the log was clean).
    pub truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
}

/// Reads every intact record of the log at `path` and truncates a torn or corrupt tail.
/// A missing file is an empty log.
pub fn recover(path: &Path) -> io::Result<Recovery> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovery::default()),
        Err(e) => return Err(e),
    };
    let total = file.metadata()?.len();
    let mut reader = BufReader::new(&file);
    let mut recovery = Recovery::default();
    let mut good: u64 = 0;
    loop {
        let mut header = [0u8; 8];
        match read_full(&mut reader, &mut header)? {
            0 => break,
            8 => {}
            n => {
                recovery.reason = Some(format!("torn header ({n} of 8 bytes) at offset {good}"));
                break;
            }
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(8..=MAX_PAYLOAD).contains(&len) {
            recovery.reason = Some(format!("impossible record length {len} at offset {good}"));
            break;
        }
        let mut payload = vec![0u8; len];
        let n = read_full(&mut reader, &mut payload)?;
        if n < len {
            recovery.reason = Some(format!("torn record ({n} of {len} bytes) at offset {good}"));
            break;
        }
        if crc32fast::hash(&payload) != crc {
            recovery.reason = Some(format!("checksum mismatch at offset {good}"));
            break;
        }
        let mut wall = [0u8; 8];
        wall.copy_from_slice(&payload[..8]);
        recovery.records.push(Record {
            wall_ms: u64::from_le_bytes(wall),
            line: payload[8..].to_vec(),
        });
        good += 8 + len as u64;
    }
    if good < total {
        recovery.truncated_bytes = total - good;
        file.set_len(good)?;
        file.sync_all()?;
    }
    Ok(recovery)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An append request: records and where to say they are durable.
type Append = (Vec<Record>, Sender<io::Result<()>>);

/// The appending side of the log: a writer thread doing group commits.
pub struct Log {
    tx: Option<Sender<Append>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Log {
    /// Opens (creating if needed) the log at `path` for appending. Call [`recover`] first.
    pub fn open(path: &Path) -> io::Result<Log> {
        Log::open_forwarding(path, None)
    }

    /// Like [`Log::open`]; once durable, each append is also sent to `forward` as one batch
    /// (source 0, lines numbered on from `first_number`), in the order it was written, so
    /// the engine sees exactly the log's order.
    pub fn open_forwarding(
        path: &Path,
        forward: Option<(Sender<Message>, u64)>,
    ) -> io::Result<Log> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        file.seek(SeekFrom::End(0))?;
        let (tx, rx) = unbounded::<Append>();
        let writer = std::thread::Builder::new()
            .name("throughline-log".into())
            .spawn(move || group_commit(file, &rx, forward))?;
        Ok(Log {
            tx: Some(tx),
            writer: Some(writer),
            path: path.to_path_buf(),
        })
    }

    /// Appends records and waits until they are on disk (fsynced).
    pub fn append(&self, records: Vec<Record>) -> io::Result<()> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("log closed"))?;
        tx.send((records, done_tx))
            .map_err(|_| io::Error::other("log writer stopped"))?;
        done_rx
            .recv()
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Writes every waiting request, fsyncs once, forwards and acknowledges them all; repeats.
fn group_commit(
    mut file: File,
    rx: &Receiver<Append>,
    mut forward: Option<(Sender<Message>, u64)>,
) {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        buf.clear();
        for (records, _) in &batch {
            for r in records {
                r.encode(&mut buf);
            }
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        if result.is_ok()
            && let Some((to, next)) = &mut forward
        {
            for (records, _) in &batch {
                for group in records.chunk_by(|a, b| a.wall_ms == b.wall_ms) {
                    let lines: Vec<&[u8]> = group.iter().map(|r| r.line.as_slice()).collect();
                    let _ = to.send(Message::Batch(Batch::of_lines(
                        0,
                        *next,
                        &lines,
                        Some(group[0].wall_ms),
                    )));
                    *next += lines.len() as u64;
                }
            }
        }
        for (_, done) in batch {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("throughline-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("events.log")
    }

    fn rec(i: u64) -> Record {
        Record {
            wall_ms: 1000 + i,
            line: format!("{{\"n\":{i}}}").into_bytes(),
        }
    }

    #[test]
    fn appends_survive_reopen() {
        let path = temp("reopen");
        {
            let log = Log::open(&path).unwrap();
            log.append(vec![rec(1), rec(2)]).unwrap();
            log.append(vec![rec(3)]).unwrap();
        }
        let r = recover(&path).unwrap();
        assert_eq!(r.records, vec![rec(1), rec(2), rec(3)]);
        assert_eq!(r.truncated_bytes, 0);
    }

    #[test]
    fn torn_and_corrupt_tails_are_truncated() {
        let path = temp("torn");
        {
            let log = Log::open(&path).unwrap();
            log.append((0..5).map(rec).collect()).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        // cut inside the last record: it is dropped, the rest kept, the file truncated
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let r = recover(&path).unwrap();
        assert_eq!(r.records.len(), 4);
        assert!(r.reason.as_deref().unwrap_or("").contains("torn record"));
        let after = std::fs::metadata(&path).unwrap().len();
        assert_eq!(after + r.truncated_bytes, full.len() as u64 - 3);
        assert_eq!(
            recover(&path).unwrap().truncated_bytes,
            0,
            "a second recovery finds it clean"
        );
        // flip a byte in the third record's payload: it and everything after go
        let mut bytes = std::fs::read(&path).unwrap();
        let third = 2 * (8 + 8 + 7) + 8 + 9;
        bytes[third] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let r = recover(&path).unwrap();
        assert_eq!(r.records, vec![rec(0), rec(1)]);
        assert!(r.reason.as_deref().unwrap_or("").contains("checksum"));
        // appending after recovery continues the clean log
        Log::open(&path).unwrap().append(vec![rec(9)]).unwrap();
        assert_eq!(
            recover(&path).unwrap().records,
            vec![rec(0), rec(1), rec(9)]
        );
    }

    #[test]
    fn concurrent_appends_are_all_durable() {
        let path = temp("concurrent");
        let log = std::sync::Arc::new(Log::open(&path).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        log.append(vec![rec(t * 100 + i)]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        assert_eq!(recover(&path).unwrap().records.len(), 200);
    }
}
