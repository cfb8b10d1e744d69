//! The durable event log: every received line, appended and fsynced before it is
//! acknowledged.
//!
//! Framing: `[u32 LE payload length][u32 LE CRC-32 of payload][payload]`, where the payload
//! is `[u64 LE wall clock ms at receipt][line bytes]`. The wall clock is kept so a replay
//! applies the far-future rule exactly as it was applied live. Its top bit marks a record
//! that compaction reduced to a [`crate::event::residue::Residue`]; the next, a record read
//! from Kafka (its partition and offset follow); the third, a record standing for several
//! lines (a span of retired lines, [`crate::store::compact`]: the count follows). A record
//! whose header or payload is cut short, or whose checksum does not match, ends the log:
//! recovery truncates it there and reports what it dropped.
//!
//! Appends go through one writer thread that batches whatever is waiting, writes it, fsyncs
//! once and then acknowledges every record of the batch (group commit), so throughput does
//! not collapse to one fsync per event. The same thread swaps in a compacted log
//! ([`Log::compact`]), so a swap is atomic with respect to appends. A server that replays
//! its log opens it paused ([`Log::open_paused`]): appends are acknowledged as always and
//! forwarded to the engine once the replay is done, read back from the file, so nothing
//! acknowledged meanwhile is held in memory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use std::collections::{BTreeMap, BTreeSet};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::event::residue::Residue;
use crate::event::{DeadReason, MAX_LINE_BYTES};

use crate::engine::input::{Batch, Boundary, Citation, Message};

/// Largest payload a record may hold (a line of 1 MiB plus the wall clock, with room).
pub const MAX_PAYLOAD: usize = (1 << 20) + 64;

/// Marks a residue record in the wall-clock field.
const RESIDUE_FLAG: u64 = 1 << 63;
/// Marks a record read from Kafka: its [`Origin`] follows the wall clock.
const ORIGIN_FLAG: u64 = 1 << 62;
/// The first byte of an encoded [`Residue::Span`] (bincode's variant index, little endian).
const SPAN_TAG: u8 = 5;

/// The log's bytes by kind: received lines as they came, single residues (dead letters,
/// duplicates, erased events, erasures: see [`Residue`]), and spans of retired lines.
pub type Kinds = [u64; 3];

/// The names of [`Kinds`]' entries, in order.
pub const KIND_NAMES: [&str; 3] = ["lines", "residues", "spans"];

/// The index in [`Kinds`] of a record: a received line, a residue, or a span (a record
/// standing for several lines, or holding a [`Residue::Span`]).
fn kind_of(residue: bool, lines: u64, line: &[u8]) -> usize {
    match (residue, lines != 1 || line.first() == Some(&SPAN_TAG)) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    }
}

/// The bytes by kind of `records`.
pub fn kinds_of(records: &[Record]) -> Kinds {
    let mut kinds = [0; 3];
    for r in records {
        if let Some(k) = kinds.get_mut(r.kind()) {
            *k += r.framed_len();
        }
    }
    kinds
}

/// Marks a record that stands for more than one line (a span of retired lines, see
/// [`crate::store::compact`]): the count follows the wall clock (and origin).
const SPAN_FLAG: u64 = 1 << 61;

/// Where a record read from a Kafka topic came from (`serve --source`). Kept in the log
/// with the record, so a restart resumes each partition right after the last record the
/// log holds: nothing read twice, nothing skipped, whatever the crash cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// The topic's partition.
    pub partition: i32,
    /// The record's offset in it.
    pub offset: i64,
}

impl Origin {
    /// The (source, line) a record read from this partition and offset is cited as: source
    /// `1 + partition` (source 0 is the server's HTTP input), line `offset`.
    pub(crate) fn cited(self) -> Option<Citation> {
        let source = u16::try_from(self.partition).ok()?.checked_add(1)?;
        Some((source, u64::try_from(self.offset).ok()?))
    }
}

/// One logged line, or what compaction left of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The wall clock (epoch ms) when the line was received.
    pub wall_ms: u64,
    /// The line as received (without `\n`), or an encoded residue.
    pub line: Vec<u8>,
    /// Whether `line` is an encoded [`crate::event::residue::Residue`].
    pub residue: bool,
    /// The Kafka record it was read from, if it was.
    pub origin: Option<Origin>,
    /// How many consecutive lines of the log it stands for: 1, or more for a span of
    /// retired lines folded by compaction ([`crate::event::residue::Span`]).
    pub lines: u64,
}

impl Record {
    /// A received line.
    pub fn line(wall_ms: u64, line: Vec<u8>) -> Record {
        Record {
            wall_ms,
            line,
            residue: false,
            origin: None,
            lines: 1,
        }
    }

    /// A received line as it is logged: the line, or for one over the line limit its dead
    /// letter (a record holds at most one line of the limit).
    pub fn received(wall_ms: u64, line: Vec<u8>) -> Record {
        let length = line.strip_suffix(b"\r").unwrap_or(&line).len();
        if length <= MAX_LINE_BYTES {
            return Record::line(wall_ms, line);
        }
        let dead = Residue::Dead {
            reason: DeadReason::LineTooLong,
            detail: format!("{} bytes", line.len()),
        };
        Record {
            wall_ms,
            line: dead.encode(),
            residue: true,
            origin: None,
            lines: 1,
        }
    }

    /// A residue standing for `lines` lines, received at `wall_ms`.
    pub fn residue(wall_ms: u64, residue: &Residue, lines: u64) -> Record {
        Record {
            wall_ms,
            line: residue.encode(),
            residue: true,
            origin: None,
            lines,
        }
    }

    /// Its bytes in the log, framing included.
    pub fn framed_len(&self) -> u64 {
        let origin = if self.origin.is_some() { 12 } else { 0 };
        let span = if self.lines != 1 { 8 } else { 0 };
        (8 + 8 + origin + span + self.line.len()) as u64
    }

    /// What it is, for the log's bytes by kind ([`Kinds`]).
    pub fn kind(&self) -> usize {
        kind_of(self.residue, self.lines, &self.line)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(20 + self.line.len());
        let mut wall = self.wall_ms;
        if self.residue {
            wall |= RESIDUE_FLAG;
        }
        if self.origin.is_some() {
            wall |= ORIGIN_FLAG;
        }
        if self.lines != 1 {
            wall |= SPAN_FLAG;
        }
        payload.extend_from_slice(&wall.to_le_bytes());
        if let Some(o) = self.origin {
            payload.extend_from_slice(&o.partition.to_le_bytes());
            payload.extend_from_slice(&o.offset.to_le_bytes());
        }
        if self.lines != 1 {
            payload.extend_from_slice(&self.lines.to_le_bytes());
        }
        payload.extend_from_slice(&self.line);
        frame(&payload, out);
    }

    /// A record from a frame's payload (at least 8 bytes, checked by the frame reader);
    /// `None` when an origin is flagged but cut short.
    fn decode(payload: &[u8]) -> Option<Record> {
        let (head, line) = Head::decode(payload)?;
        Some(Record {
            wall_ms: head.wall_ms,
            line: line.to_vec(),
            residue: head.residue,
            origin: head.origin,
            lines: head.lines,
        })
    }
}

/// What a record's payload says before its line: everything but the line's bytes.
struct Head {
    wall_ms: u64,
    residue: bool,
    origin: Option<Origin>,
    lines: u64,
}

impl Head {
    /// The head of a payload and the rest (the line); `None` when cut short.
    fn decode(payload: &[u8]) -> Option<(Head, &[u8])> {
        let wall = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
        let mut rest = payload.get(8..)?;
        let origin = if wall & ORIGIN_FLAG != 0 {
            let partition = i32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
            let offset = i64::from_le_bytes(rest.get(4..12)?.try_into().ok()?);
            rest = rest.get(12..)?;
            Some(Origin { partition, offset })
        } else {
            None
        };
        let lines = if wall & SPAN_FLAG != 0 {
            let lines = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            rest = rest.get(8..)?;
            lines
        } else {
            1
        };
        let head = Head {
            wall_ms: wall & !(RESIDUE_FLAG | ORIGIN_FLAG | SPAN_FLAG),
            residue: wall & RESIDUE_FLAG != 0,
            origin,
            lines,
        };
        Some((head, rest))
    }
}

/// Where the log's folded lines end (compaction's spans of retired lines, see
/// [`crate::store::compact`]): the last line a span stands for and the engine clock after
/// it; `None` when nothing is folded, so a replay sees every line as received.
pub fn folded_until(records: &[Record]) -> Option<(u64, u64)> {
    let mut line = 0u64;
    let mut last = None;
    for r in records {
        line += r.lines.max(1);
        if r.kind() != 2 {
            continue;
        }
        let clock = match Residue::decode(&r.line) {
            Ok(Residue::Span(span)) => span.clock,
            _ => 0,
        };
        last = Some((line, clock));
    }
    last
}

/// The number of log lines `records` stand for (a span stands for several).
pub fn lines_of(records: &[Record]) -> u64 {
    records.iter().map(|r| r.lines).sum()
}

/// The records of checked frames; a frame whose checksum holds but whose record is cut
/// short is an error (a defect, not a torn write), never skipped.
fn decode_all(payloads: &[Vec<u8>]) -> io::Result<Vec<Record>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Record::decode(p).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("log record {} is malformed", i + 1),
                )
            })
        })
        .collect()
}

/// The next offset to read of every partition the records came from: one past the last
/// record of each that the log holds.
pub fn kafka_positions(records: &[Record]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    let mut at = |partition: i32, after: i64| {
        let slot = next.entry(partition).or_insert(0);
        *slot = (*slot).max(after);
    };
    for r in records {
        if let Some(o) = r.origin {
            at(o.partition, o.offset + 1);
        }
        // a span keeps the offsets of the records it folded
        if r.residue
            && let Ok(Residue::Span(span)) = Residue::decode(&r.line)
        {
            for &(partition, after) in &span.kafka {
                at(partition, after);
            }
        }
    }
    next
}

/// The engine's input batches for `records` (lines numbered from `first_number`, source 0):
/// one per run of equal receipt wall clock, at most 4096 lines each, in order. A record
/// read from Kafka is cited as line `offset` of source `1 + partition` (see
/// [`crate::dataflow::SourceNames::with_partitions`]).
pub fn batches(records: &[Record], first_number: u64) -> Vec<Batch> {
    batches_cut(records, first_number, &BTreeSet::new())
}

/// As [`batches`], for a replay that must end published groups exactly at the line
/// numbers `cuts` and nowhere between the first and the last of them (the groups sinks sent
/// and have not seen confirmed: see [`crate::engine::input::Boundary`]). A batch also ends
/// at every cut; one ending at a cut is [`Boundary::Cut`], one ending between the first
/// and the last cut [`Boundary::Hold`].
pub fn batches_cut(records: &[Record], first_number: u64, cuts: &BTreeSet<u64>) -> Vec<Batch> {
    let (first_cut, last_cut) = match (cuts.first(), cuts.last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => (u64::MAX, 0),
    };
    let mut out = Vec::new();
    let (mut start, mut number) = (0, first_number);
    while start < records.len() {
        // a span (several lines in one record) is a batch of its own
        let mut end = start + 1;
        let mut last = number + records[start].lines.max(1) - 1;
        if records[start].lines == 1 {
            while end < records.len()
                && end - start < 4096
                && records[end].lines == 1
                && records[end].wall_ms == records[start].wall_ms
                && !cuts.contains(&last)
            {
                end += 1;
                last += 1;
            }
        }
        let lines: Vec<(&[u8], bool, Option<Citation>)> = records[start..end]
            .iter()
            .map(|r| {
                (
                    r.line.as_slice(),
                    r.residue,
                    r.origin.and_then(Origin::cited),
                )
            })
            .collect();
        let mut batch = Batch::of_lines(0, number, &lines, Some(records[start].wall_ms));
        batch.boundary = if cuts.contains(&last) {
            Boundary::Cut
        } else if (first_cut..last_cut).contains(&last) {
            Boundary::Hold
        } else {
            Boundary::Any
        };
        out.push(batch);
        number = last + 1;
        start = end;
    }
    out
}

/// Appends one framed payload to `out`.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The intact frames at the start of a file.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    pub payloads: Vec<Vec<u8>>,
    /// Byte length of the intact frames.
    pub good: u64,
    /// Why reading stopped before `upto`, if it did.
    pub reason: Option<String>,
}

/// What reading the next frame found.
enum Next {
    /// A frame whose checksum holds: its payload is read.
    Frame,
    /// The end of the input, at a frame boundary.
    End,
    /// A torn or corrupt frame: why.
    Bad(String),
}

/// Reads the frame at offset `at` of `reader` into `payload` (payloads of at least
/// `min_len` bytes).
fn next_frame(
    reader: &mut impl Read,
    at: u64,
    min_len: usize,
    payload: &mut Vec<u8>,
) -> io::Result<Next> {
    let mut header = [0u8; 8];
    match read_full(reader, &mut header)? {
        0 => return Ok(Next::End),
        8 => {}
        n => {
            return Ok(Next::Bad(format!(
                "torn header ({n} of 8 bytes) at offset {at}"
            )));
        }
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(min_len..=MAX_PAYLOAD).contains(&len) {
        return Ok(Next::Bad(format!(
            "impossible record length {len} at offset {at}"
        )));
    }
    payload.clear();
    payload.resize(len, 0);
    let n = read_full(reader, payload)?;
    if n < len {
        return Ok(Next::Bad(format!(
            "torn record ({n} of {len} bytes) at offset {at}"
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Ok(Next::Bad(format!("checksum mismatch at offset {at}")));
    }
    Ok(Next::Frame)
}

/// Reads the intact frames of `reader` (payloads of at least `min_len` bytes) within its
/// first `upto` bytes.
pub(crate) fn read_frames(reader: impl Read, upto: u64, min_len: usize) -> io::Result<Frames> {
    let mut reader = BufReader::new(reader.take(upto));
    let mut frames = Frames::default();
    loop {
        let mut payload = Vec::new();
        match next_frame(&mut reader, frames.good, min_len, &mut payload)? {
            Next::Frame => {
                frames.good += 8 + payload.len() as u64;
                frames.payloads.push(payload);
            }
            Next::End => break,
            Next::Bad(why) => {
                frames.reason = Some(why);
                break;
            }
        }
    }
    Ok(frames)
}

/// Reads every intact frame of the file at `path` and truncates a torn or corrupt tail.
/// A missing file has no frames.
pub(crate) fn recover_frames(path: &Path, min_len: usize) -> io::Result<(Frames, u64)> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Frames::default(), 0)),
        Err(e) => return Err(e),
    };
    let total = file.metadata()?.len();
    let frames = read_frames(&file, total, min_len)?;
    let mut truncated = 0;
    if frames.good < total {
        truncated = total - frames.good;
        file.set_len(frames.good)?;
        file.sync_all()?;
    }
    Ok((frames, truncated))
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
/// A missing file is an empty log. A compaction cut short (its temporary file) is removed.
pub fn recover(path: &Path) -> io::Result<Recovery> {
    match std::fs::remove_file(compacting_path(path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let (frames, truncated_bytes) = recover_frames(path, 8)?;
    Ok(Recovery {
        records: decode_all(&frames.payloads)?,
        truncated_bytes,
        reason: if truncated_bytes > 0 {
            frames.reason
        } else {
            None
        },
    })
}

/// What [`verify`] found: the log's intact prefix, checked but not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// Bytes of intact records (the log's length now).
    pub bytes: u64,
    /// Intact records.
    pub records: u64,
    /// The lines they stand for (a span stands for several).
    pub lines: u64,
    /// Bytes cut off a torn or corrupt tail (0 when the log was clean).
    pub truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
    /// The intact records' bytes by kind.
    pub kinds: Kinds,
}

/// Checks every record of the log at `path` (lengths and checksums, one sequential read,
/// nothing kept in memory) and truncates a torn or corrupt tail, as [`recover`] does: after
/// it, appends may start at once while the records are read later ([`read_records`]). A
/// missing file is an empty log; a compaction cut short (its temporary file) is removed.
pub fn verify(path: &Path) -> io::Result<Verified> {
    match std::fs::remove_file(compacting_path(path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verified::default()),
        Err(e) => return Err(e),
    };
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut verified = Verified::default();
    let mut payload = Vec::new();
    loop {
        match next_frame(&mut reader, verified.bytes, 8, &mut payload)? {
            Next::Frame => {}
            Next::End => break,
            Next::Bad(why) => {
                verified.reason = Some(why);
                break;
            }
        }
        let Some((head, line)) = Head::decode(&payload) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("log record {} is malformed", verified.records + 1),
            ));
        };
        if let Some(k) = verified
            .kinds
            .get_mut(kind_of(head.residue, head.lines, line))
        {
            *k += 8 + payload.len() as u64;
        }
        verified.records += 1;
        verified.lines += head.lines.max(1);
        verified.bytes += 8 + payload.len() as u64;
    }
    drop(reader);
    if verified.bytes < total {
        verified.truncated_bytes = total - verified.bytes;
        file.set_len(verified.bytes)?;
        file.sync_all()?;
    } else {
        verified.reason = None;
    }
    Ok(verified)
}

/// The records of the log's first `bytes` bytes, checked by [`verify`] (the log may have
/// grown since).
pub fn read_records(path: &Path, bytes: u64) -> io::Result<Vec<Record>> {
    let frames = read_frames(File::open(path)?, bytes, 8)?;
    if frames.good != bytes {
        return Err(io::Error::other(format!(
            "the log changed within its first {bytes} bytes: {}",
            frames.reason.unwrap_or_default()
        )));
    }
    decode_all(&frames.payloads)
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

/// Where a compaction writes the new log before swapping it in.
fn compacting_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".compacting");
    path.with_file_name(name)
}

/// The directory holding `path`.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or creation in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A request to the writer thread.
enum Request {
    /// Start forwarding to the engine (the log was opened paused): first what was appended
    /// since it was opened, then every append.
    Forward(Sender<Message>, Sender<io::Result<()>>),
    /// Also forward every append to a second channel from now on (`None`: stop): a
    /// rebuild's engine. The answer is the log's durable length and the number of the first
    /// line the second channel gets.
    Tee(Option<Sender<Message>>, Sender<io::Result<(u64, u64)>>),
    /// A rebuild's switch-over: stop teeing, say so on `ready` once every append so far is
    /// forwarded, and hold every later append until `resume` names the channel to forward
    /// to from then on (`None` or a dropped `resume`: the same as before).
    Handover {
        ready: Sender<()>,
        resume: Receiver<Option<Sender<Message>>>,
    },
    /// Records to append, and where to say they are durable.
    Append(Vec<Record>, Sender<io::Result<()>>),
    /// Swap in the compacted log at the path: it replaces the first `prefix` bytes of the
    /// current log; what was appended after them is copied over first.
    Swap {
        prefix: u64,
        /// The prefix's bytes by kind before and after.
        kinds: (Kinds, Kinds),
        done: Sender<io::Result<u64>>,
    },
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Lines read (the compacted prefix; a span counts as the lines it stands for).
    pub records: u64,
    /// Records reduced to residues by this compaction.
    pub reduced: u64,
    /// Log bytes before.
    pub bytes_before: u64,
    /// Log bytes after.
    pub bytes_after: u64,
}

/// The appending side of the log: a writer thread doing group commits.
pub struct Log {
    tx: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
    /// Bytes of the log known to be on disk.
    durable: Arc<AtomicU64>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    /// Why the log stopped acknowledging appends, if it did (fail-stop).
    failure: Arc<Mutex<Option<String>>>,
    /// Line number of the last record forwarded to the engine (0 when not forwarding).
    forwarded: Arc<AtomicU64>,
    /// The log's bytes by kind.
    kinds: Arc<Mutex<Kinds>>,
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
        Log::open_with(path, forward, None)
    }

    /// Like [`Log::open`], for a server that replays the log first: appends are
    /// acknowledged as always (durable, not held in memory) and forwarded to the engine only
    /// once [`Log::start_forwarding`] is called, the first numbered `first_number`.
    pub fn open_paused(path: &Path, first_number: u64) -> io::Result<Log> {
        Log::open_with(path, None, Some(first_number))
    }

    /// Starts forwarding a log opened with [`Log::open_paused`] to `to`: what was appended
    /// since it was opened (read back from the file), then each append as
    /// [`Log::open_forwarding`] does. Returns once the former is sent.
    pub fn start_forwarding(&self, to: Sender<Message>) -> io::Result<()> {
        self.ask(|done| Request::Forward(to, done))
    }

    fn open_with(
        path: &Path,
        forward: Option<(Sender<Message>, u64)>,
        paused: Option<u64>,
    ) -> io::Result<Log> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        let durable = Arc::new(AtomicU64::new(len));
        let failure = Arc::new(Mutex::new(None));
        let forwarded = Arc::new(AtomicU64::new(
            forward
                .as_ref()
                .map(|(_, next)| *next)
                .or(paused)
                .map_or(0, |next| next.saturating_sub(1)),
        ));
        let (tx, rx) = unbounded::<Request>();
        let kinds = Arc::new(Mutex::new([0; 3]));
        let writer = {
            let (path, durable) = (path.to_path_buf(), Arc::clone(&durable));
            let (failure, forwarded) = (Arc::clone(&failure), Arc::clone(&forwarded));
            let kinds = Arc::clone(&kinds);
            std::thread::Builder::new()
                .name("throughline-log".into())
                .spawn(move || {
                    Writer {
                        file,
                        path,
                        durable,
                        forward,
                        tee: None,
                        paused: paused.map(|next| (len, next)),
                        failed: None,
                        failure,
                        forwarded,
                        kinds,
                    }
                    .run(&rx)
                })?
        };
        Ok(Log {
            tx: Some(tx),
            writer: Some(writer),
            path: path.to_path_buf(),
            durable,
            compacting: Mutex::new(()),
            failure,
            forwarded,
            kinds,
        })
    }

    /// Sets the log's bytes by kind as [`verify`] found them (appends and compactions
    /// keep them current from then on).
    pub fn count_kinds(&self, kinds: Kinds) {
        if let Ok(mut k) = self.kinds.lock() {
            *k = kinds;
        }
    }

    /// The log's bytes by kind (see [`Kinds`]).
    pub fn kinds(&self) -> Kinds {
        self.kinds.lock().map_or([0; 3], |k| *k)
    }

    /// The log's bytes known to be on disk.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The line number of the last record handed to the engine: once the engine has
    /// processed that many lines it has seen every record acknowledged so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Acquire)
    }

    /// Why the log stopped acknowledging appends (a failed fsync, or a failed write it could
    /// not cut back), if it did; the server must then be restarted.
    pub fn failed(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn send(&self, request: Request) -> io::Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(|| io::Error::other("log closed"))?
            .send(request)
            .map_err(|_| io::Error::other("log writer stopped"))
    }

    /// Appends records and waits until they are on disk (fsynced).
    pub fn append(&self, records: Vec<Record>) -> io::Result<()> {
        self.ask(|done| Request::Append(records, done))
    }

    /// Sends the writer thread the request `make` builds around a reply channel, and waits
    /// for the reply.
    fn ask<T>(&self, make: impl FnOnce(Sender<io::Result<T>>) -> Request) -> io::Result<T> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        self.send(make(done_tx))?;
        done_rx
            .recv()
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    /// Compacts the log while it stays open for appends: reads its durable records, passes
    /// them to `rewrite` (which returns the records to keep in their place and how many it
    /// reduced; none leaves the log as it is), writes the
    /// result beside the log and has the writer swap it in, atomically (rename), after
    /// copying over whatever was appended meanwhile. Appends wait only during the swap.
    pub fn compact(
        &self,
        rewrite: impl FnOnce(Vec<Record>) -> io::Result<(Vec<Record>, u64)>,
    ) -> io::Result<CompactStats> {
        let _one = self
            .compacting
            .lock()
            .map_err(|_| io::Error::other("a compaction failed"))?;
        let prefix = self.durable.load(Ordering::Acquire);
        let frames = read_frames(File::open(&self.path)?, prefix, 8)?;
        if frames.good != prefix {
            return Err(io::Error::other(format!(
                "the log is damaged within its first {prefix} bytes: {}",
                frames.reason.unwrap_or_default()
            )));
        }
        let records = decode_all(&frames.payloads)?;
        let mut stats = CompactStats {
            records: lines_of(&records),
            bytes_before: prefix,
            ..CompactStats::default()
        };
        let before = kinds_of(&records);
        let kept;
        (kept, stats.reduced) = rewrite(records)?;
        if stats.reduced == 0 {
            stats.bytes_after = prefix; // nothing to reduce: the log stays as it is
            return Ok(stats);
        }
        write_records(&compacting_path(&self.path), &kept)?;
        stats.bytes_after = self.ask(|done| Request::Swap {
            prefix,
            kinds: (before, kinds_of(&kept)),
            done,
        })?;
        Ok(stats)
    }

    /// Waits for a compaction in progress, and holds off others while the guard lives (a
    /// rebuild reading the log's first bytes as they were when it began to follow it).
    pub fn compaction_held(&self) -> io::Result<std::sync::MutexGuard<'_, ()>> {
        self.compacting
            .lock()
            .map_err(|_| io::Error::other("a compaction failed"))
    }

    /// Forwards every later append to `to` as well (a rebuild's engine), until
    /// [`Log::untee`] or [`Log::handover`]. Returns the log's durable length and the number
    /// of the first line `to` gets: the lines before it are in the log's first bytes.
    pub fn tee(&self, to: Sender<Message>) -> io::Result<(u64, u64)> {
        self.ask(|done| Request::Tee(Some(to), done))
    }

    /// Stops forwarding to the second channel of [`Log::tee`].
    pub fn untee(&self) -> io::Result<()> {
        self.ask(|done| Request::Tee(None, done)).map(|_| ())
    }

    /// A rebuild's switch-over: returns once the writer has forwarded every append so far
    /// and stopped teeing; appends wait (unacknowledged) until `resume` is sent the channel
    /// to forward to from then on (or is dropped: the same as before).
    pub fn handover(&self, resume: Receiver<Option<Sender<Message>>>) -> io::Result<()> {
        let (ready, held) = crossbeam_channel::bounded(1);
        self.send(Request::Handover { ready, resume })?;
        held.recv()
            .map_err(|_| io::Error::other("log writer stopped"))
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `records` as a new log at `path` (replacing it), fsynced.
fn write_records(path: &Path, records: &[Record]) -> io::Result<()> {
    let mut file = step("compact::create", || File::create(path))?;
    let mut buf = Vec::with_capacity(1 << 20);
    for r in records {
        r.encode(&mut buf);
        if buf.len() >= 1 << 20 {
            write_all(&mut file, &buf, "compact::write")?;
            buf.clear();
        }
    }
    write_all(&mut file, &buf, "compact::write")?;
    step("compact::fsync", || file.sync_all())
}

/// `file.write_all(buf)`. With fail points on (`cargo test`), fail point `name` makes it
/// write only part of `buf` (the argument's byte count, else half) and fail as a full disk
/// does: the tests' fault injection at every write of the log and of compaction.
fn write_all(file: &mut File, buf: &[u8], name: &str) -> io::Result<()> {
    let _ = name; // used only with fail points on
    fail::fail_point!(name, |arg: Option<String>| {
        let n = arg.and_then(|a| a.parse().ok()).unwrap_or(buf.len() / 2);
        let _ = file.write_all(buf.get(..n).unwrap_or(buf));
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{name}: no space left on device (injected)"),
        ))
    });
    file.write_all(buf)
}

/// Runs `step`. With fail points on (`cargo test`), fail point `name` makes it fail
/// instead: the tests' fault injection at every fsync, rename and cut of the log and of
/// compaction.
fn step<T>(name: &str, step: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _ = name; // used only with fail points on
    fail::fail_point!(name, |_| Err(io::Error::other(format!(
        "{name}: I/O error (injected)"
    ))));
    step()
}

/// Replaces the log at `path` (no writer open on it) with `records`, crash-safely: the new
/// log is written beside it and renamed over it. Returns its length.
pub fn replace(path: &Path, records: &[Record]) -> io::Result<u64> {
    let temp = compacting_path(path);
    write_records(&temp, records)?;
    step("compact::rename", || std::fs::rename(&temp, path))?;
    step("compact::sync_dir", || sync_dir(dir_of(path)))?;
    Ok(std::fs::metadata(path)?.len())
}

impl Drop for Log {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread's state.
struct Writer {
    file: File,
    path: PathBuf,
    durable: Arc<AtomicU64>,
    forward: Option<(Sender<Message>, u64)>,
    /// A second channel every append goes to ([`Log::tee`]).
    tee: Option<Sender<Message>>,
    /// Opened paused ([`Log::open_paused`]): the byte offset and line number from which
    /// to forward once asked.
    paused: Option<(u64, u64)>,
    /// Set once the log failed for good (fail-stop).
    failed: Option<String>,
    /// The same, shared with [`Log::failed`].
    failure: Arc<Mutex<Option<String>>>,
    /// Shared with [`Log::forwarded`].
    forwarded: Arc<AtomicU64>,
    /// Shared with [`Log::kinds`].
    kinds: Arc<Mutex<Kinds>>,
}

impl Writer {
    /// Serves requests until the log is closed.
    fn run(mut self, rx: &Receiver<Request>) {
        let mut appends = Vec::new();
        while let Ok(first) = rx.recv() {
            for request in std::iter::once(first).chain(rx.try_iter()) {
                match request {
                    Request::Append(records, done) => appends.push((records, done)),
                    Request::Tee(to, done) => {
                        self.commit(&mut appends);
                        let _ = done.send(self.tee(to));
                    }
                    Request::Handover { ready, resume } => {
                        self.commit(&mut appends);
                        self.tee = None;
                        let _ = ready.send(());
                        if let Ok(Some(to)) = resume.recv()
                            && let Some((forward, _)) = &mut self.forward
                        {
                            *forward = to;
                        }
                    }
                    Request::Forward(to, done) => {
                        self.commit(&mut appends);
                        let _ = done.send(self.start_forwarding(to));
                    }
                    Request::Swap {
                        prefix,
                        kinds: (before, after),
                        done,
                    } => {
                        self.commit(&mut appends);
                        let swapped = self.swap(prefix);
                        if swapped.is_ok()
                            && let Ok(mut k) = self.kinds.lock()
                        {
                            for ((k, b), a) in k.iter_mut().zip(before).zip(after) {
                                *k = k.saturating_sub(b) + a;
                            }
                        }
                        let _ = done.send(swapped);
                    }
                }
            }
            self.commit(&mut appends);
        }
    }

    /// Writes every waiting append, fsyncs once, forwards and acknowledges them all.
    fn commit(&mut self, batch: &mut Vec<(Vec<Record>, Sender<io::Result<()>>)>) {
        if batch.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        for (records, _) in batch.iter() {
            for r in records {
                r.encode(&mut buf);
            }
        }
        let result = match &self.failed {
            Some(why) => Err(io::Error::other(why.clone())),
            None => self.write_durably(&buf),
        };
        if result.is_ok() {
            self.durable.fetch_add(buf.len() as u64, Ordering::AcqRel);
            if let Ok(mut kinds) = self.kinds.lock() {
                for (records, _) in batch.iter() {
                    for (k, add) in kinds.iter_mut().zip(kinds_of(records)) {
                        *k += add;
                    }
                }
            }
            if let Some((to, next)) = &mut self.forward {
                for (records, _) in batch.iter() {
                    for b in batches(records, *next) {
                        let _ = to.send(Message::Batch(b));
                    }
                    if let Some(tee) = &self.tee {
                        for b in batches(records, *next) {
                            let _ = tee.send(Message::Batch(b));
                        }
                    }
                    *next += records.len() as u64;
                }
                self.forwarded
                    .store(next.saturating_sub(1), Ordering::Release);
            }
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }

    /// Starts (or, with `None`, stops) teeing: see [`Log::tee`].
    fn tee(&mut self, to: Option<Sender<Message>>) -> io::Result<(u64, u64)> {
        let Some((_, next)) = &self.forward else {
            return Err(io::Error::other("the log is not forwarding yet"));
        };
        let next = *next;
        self.tee = to;
        Ok((self.durable.load(Ordering::Acquire), next))
    }

    /// Sends what was appended since the log was opened paused to `to`, then forwards
    /// every append there.
    fn start_forwarding(&mut self, to: Sender<Message>) -> io::Result<()> {
        let Some((from, next)) = self.paused else {
            return Err(io::Error::other("the log is not paused"));
        };
        let durable = self.durable.load(Ordering::Acquire);
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(from))?;
        let frames = read_frames(file, durable.saturating_sub(from), 8)?;
        if frames.good != durable.saturating_sub(from) {
            return Err(io::Error::other(format!(
                "the log changed after offset {from}: {}",
                frames.reason.unwrap_or_default()
            )));
        }
        let records = decode_all(&frames.payloads)?;
        for b in batches(&records, next) {
            let _ = to.send(Message::Batch(b));
        }
        let next = next + lines_of(&records);
        self.forwarded
            .store(next.saturating_sub(1), Ordering::Release);
        self.paused = None;
        self.forward = Some((to, next));
        Ok(())
    }

    /// Appends `buf` and fsyncs it. A failed write may have left part of `buf` on disk, so
    /// the file is cut back to its last durable byte before anything else is appended (no
    /// acknowledged record ever follows a partial one); the error is returned and the next
    /// append tries again (a full disk: the caller answers 503 and the client retries). A
    /// failed fsync, or a failed cut, is fail-stop, as in PostgreSQL: after it the kernel
    /// may have dropped dirty pages, so nothing more is acknowledged until a restart
    /// recovers from what the log really holds.
    fn write_durably(&mut self, buf: &[u8]) -> io::Result<()> {
        let durable = self.durable.load(Ordering::Acquire);
        if let Err(e) = write_all(&mut self.file, buf, "log::write") {
            let file = &self.file;
            if let Err(cut) = step("log::cut", || file.set_len(durable))
                .and_then(|()| step("log::fsync", || file.sync_data()))
            {
                self.fail(format!(
                    "the event log could not be cut back to its last durable byte after a failed write ({e}): {cut}"
                ));
            }
            return Err(e);
        }
        let file = &self.file;
        if let Err(e) = step("log::fsync", || file.sync_data()) {
            self.fail(format!("fsync of the event log failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Stops acknowledging appends for good (fail-stop), saying why on stderr and in
    /// [`Log::failed`].
    fn fail(&mut self, why: String) {
        let why = format!(
            "{why}; no more events are acknowledged: restart the server to recover from the log"
        );
        eprintln!("throughline: error: {why}");
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(why.clone());
        }
        self.failed = Some(why);
    }

    /// Copies what was appended after `prefix` onto the compacted log, renames it over the
    /// log and continues appending to it. Returns the new length.
    ///
    /// A failure before the rename leaves the old log as it was, still appended to. Once
    /// the rename is done the path names the compacted log, so appends go there from then
    /// on (never to the unlinked old file); a failure after it (the directory's fsync) is
    /// fail-stop, since the rename may not be durable.
    fn swap(&mut self, prefix: u64) -> io::Result<u64> {
        if self.paused.is_some() {
            return Err(io::Error::other(
                "the log is being replayed: compact once the server has recovered",
            ));
        }
        let temp = compacting_path(&self.path);
        let mut compacted = step("swap::open", || OpenOptions::new().append(true).open(&temp))?;
        let mut old = File::open(&self.path)?;
        old.seek(SeekFrom::Start(prefix))?;
        step("swap::copy", || io::copy(&mut old, &mut compacted))?;
        step("swap::fsync", || compacted.sync_all())?;
        step("swap::rename", || std::fs::rename(&temp, &self.path))?;
        self.file = compacted;
        let settled = self
            .file
            .seek(SeekFrom::End(0))
            .and_then(|len| step("swap::sync_dir", || sync_dir(dir_of(&self.path))).map(|()| len));
        match settled {
            Ok(len) => {
                self.durable.store(len, Ordering::Release);
                Ok(len)
            }
            Err(e) => {
                self.fail(format!(
                    "the compacted event log could not be made durable: {e}"
                ));
                Err(e)
            }
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
        Record::line(1000 + i, format!("{{\"n\":{i}}}").into_bytes())
    }

    /// A logged Kafka record is cited by partition and offset, named after the topic; its
    /// line number (its identity for erasure and compaction) stays its place in the log.
    #[test]
    fn a_logged_kafka_record_is_cited_by_partition_and_offset() {
        let mut records: Vec<Record> = (0..3).map(|_| rec(0)).collect();
        records[1].origin = Some(Origin {
            partition: 2,
            offset: 41,
        });
        let batch = &batches(&records, 7)[0];
        let names = crate::dataflow::SourceNames::new(vec!["http".into()])
            .with_partitions("kafka://b:9092/events".into());
        let cited: Vec<(String, u64, u64)> = batch
            .lines
            .iter()
            .map(|l| (names.name(l.cited().0), l.cited().1, l.number))
            .collect();
        assert_eq!(
            cited,
            [
                ("http".to_string(), 7, 7),
                ("kafka://b:9092/events#2".to_string(), 41, 8),
                ("http".to_string(), 9, 9)
            ]
        );
    }

    /// Batches end at every cut; those ending at a cut are `Cut`, those ending between the
    /// first and the last cut `Hold`, the others `Any`; every line is in one batch, in order.
    #[test]
    fn a_replay_ends_batches_at_the_cuts() {
        let records: Vec<Record> = (0..12).map(|i| rec(i / 5)).collect();
        let cuts = BTreeSet::from([4, 7, 9]);
        let batches = batches_cut(&records, 1, &cuts);
        let shape: Vec<(u64, u64, Boundary)> = batches
            .iter()
            .map(|b| {
                let first = b.lines.first().unwrap().number;
                (first, b.lines.last().unwrap().number, b.boundary)
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, 4, Boundary::Cut),
                (5, 5, Boundary::Hold), // a new receipt time starts at line 6
                (6, 7, Boundary::Cut),
                (8, 9, Boundary::Cut),
                (10, 10, Boundary::Any),
                (11, 12, Boundary::Any),
            ]
        );
        assert!(
            batches_cut(&records, 1, &BTreeSet::new())
                .iter()
                .all(|b| b.boundary == Boundary::Any)
        );
    }

    #[test]
    fn kafka_origins_survive_the_log_and_give_the_resume_positions() {
        let path = temp("origins");
        let mut records: Vec<Record> = (0..4).map(rec).collect();
        for (i, r) in records.iter_mut().enumerate() {
            if i > 0 {
                r.origin = Some(Origin {
                    partition: (i % 2) as i32,
                    offset: 10 * i as i64,
                });
            }
        }
        records[3].residue = true;
        {
            let log = Log::open(&path).unwrap();
            log.append(records.clone()).unwrap();
        }
        let recovered = recover(&path).unwrap().records;
        assert_eq!(recovered, records);
        assert_eq!(
            kafka_positions(&recovered),
            BTreeMap::from([(0, 21), (1, 31)])
        );
    }

    /// A span counts as the lines it stands for, in batches (its own), in `verify` and in
    /// the bytes by kind; `verify` finds what `recover` finds without loading it.
    #[test]
    fn spans_count_as_their_lines_everywhere() {
        let path = temp("spans");
        let span = Residue::Span(Box::default());
        let dead = Residue::Dead {
            reason: DeadReason::BadTimestamp,
            detail: "x".into(),
        };
        let records = vec![
            rec(1),
            Record::residue(1001, &span, 40),
            Record::residue(1001, &span, 1),
            Record::residue(1001, &dead, 1),
            rec(1),
        ];
        assert_eq!(
            records.iter().map(Record::kind).collect::<Vec<_>>(),
            [0, 2, 2, 1, 0]
        );
        Log::open(&path).unwrap().append(records.clone()).unwrap();
        let verified = verify(&path).unwrap();
        assert_eq!((verified.records, verified.lines), (5, 44));
        assert_eq!(verified.kinds, kinds_of(&records));
        assert_eq!(verified.kinds.iter().sum::<u64>(), verified.bytes);
        assert_eq!(read_records(&path, verified.bytes).unwrap(), records);
        let numbers: Vec<(u64, usize)> = batches(&records, 1)
            .iter()
            .map(|b| (b.lines[0].number, b.lines.len()))
            .collect();
        assert_eq!(numbers, [(1, 1), (2, 1), (42, 3)]);
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
