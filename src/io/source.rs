//! Input sources: a reader thread that splits bytes into lines (SPEC section 1 framing) and
//! sends them to the engine in batches over a bounded channel.
//!
//! A line is never buffered beyond [`MAX_LINE_BYTES`] + 1 bytes: a longer one is skipped to
//! its end and reported as too long, so one bad line costs no memory and loses no neighbour.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::dataflow::SourceNames;
use crate::engine::input::{Batch, LineRef, Message};
use crate::engine::{self, EngineError, Options, Sinks, Summary};
use crate::event::Ident;
use crate::event::MAX_LINE_BYTES;
use crate::explain;
use crate::io::kafka::{KafkaInput, KafkaUrl};
use crate::spec::Spec;

/// Runs the dataflow of `spec` over `sources` until they end.
pub fn run(
    spec: Arc<Spec>,
    sources: Vec<Source>,
    sinks: Sinks,
    options: Options,
) -> Result<Summary, EngineError> {
    let live = sources.iter().any(|s| s.live);
    let source_names = names(&sources);
    let (rx, _reader) = spawn(sources);
    engine::run_channel(spec, rx, source_names, live, sinks, options)
}

/// A question for [`run_and_explain`]: an identifier, and the clock to explain it at
/// (`None`: the final clock).
pub type Question = (Ident, Option<u64>);

/// Runs the dataflow of `spec` over `sources` (stopping at [`Options::until_ms`], if set) and
/// then explains the profile of each questioned identifier. Returns the summary and, per
/// question, the explanation and the time it took.
pub fn run_and_explain(
    spec: Arc<Spec>,
    sources: Vec<Source>,
    sinks: Sinks,
    options: Options,
    questions: Vec<Question>,
) -> Result<(Summary, Vec<(explain::Outcome, Duration)>), EngineError> {
    let source_names = names(&sources);
    let (read, _reader) = spawn(sources);
    // the reader's messages, then the questions, then the end
    let (tx, rx) = crossbeam_channel::bounded(4);
    let (reply, answers) = crossbeam_channel::unbounded();
    let asked = questions.len();
    std::thread::spawn(move || {
        for message in read {
            if matches!(message, Message::End) {
                break;
            }
            if tx.send(message).is_err() {
                return;
            }
        }
        for (ident, at) in questions {
            let _ = tx.send(Message::Explain(ident, at, reply.clone()));
        }
        let _ = tx.send(Message::End);
    });
    let summary = engine::run_channel(spec, rx, source_names, false, sinks, options)?;
    let outcomes: Vec<_> = answers.try_iter().collect();
    if outcomes.len() != asked {
        return Err(EngineError::Internal(
            "internal error: the engine did not answer every question".into(),
        ));
    }
    Ok((summary, outcomes))
}

/// An opened input.
pub struct Source {
    /// Name used in dead letters and errors (`-` for stdin).
    pub name: String,
    input: Input,
    /// Whether data may arrive over time (a pipe, terminal or socket) rather than being all
    /// there (a regular file).
    pub live: bool,
}

/// Where a source's lines come from.
enum Input {
    /// Bytes split into lines.
    Stream(Box<dyn Read + Send>),
    /// Records of a Kafka topic, one line each (shared so the run can commit its offsets
    /// once its outputs are written).
    Kafka(Arc<Mutex<KafkaInput>>),
}

impl Source {
    /// Standard input.
    pub fn stdin() -> Source {
        Source {
            name: "-".into(),
            live: !stdin_is_regular_file(),
            input: Input::Stream(Box::new(io::stdin())),
        }
    }

    /// A file, opened now so a missing file is reported before anything runs.
    pub fn file(path: &Path) -> io::Result<Source> {
        let file = File::open(path)?;
        let live = !file.metadata()?.is_file();
        Ok(Source {
            name: path.display().to_string(),
            input: Input::Stream(Box::new(file)),
            live,
        })
    }

    /// In-memory bytes (tests, replays).
    pub fn bytes(name: &str, data: Vec<u8>) -> Source {
        Source {
            name: name.into(),
            input: Input::Stream(Box::new(io::Cursor::new(data))),
            live: false,
        }
    }

    /// Any reader, e.g. a socket; treated as live.
    pub fn reader(name: &str, reader: Box<dyn Read + Send>) -> Source {
        Source {
            name: name.into(),
            input: Input::Stream(reader),
            live: true,
        }
    }

    /// A Kafka topic (`kafka://HOST:PORT/TOPIC?group=G`; see [`crate::io::kafka`]), read to
    /// the end offsets found now when `until_end`, else as records arrive.
    pub fn kafka(url: &str, until_end: bool) -> Result<Source, String> {
        let url = KafkaUrl::parse(url)?;
        let input = KafkaInput::open(&url, until_end)?;
        Ok(Source {
            name: url.name(),
            live: input.live(),
            input: Input::Kafka(Arc::new(Mutex::new(input))),
        })
    }

    /// The names its lines are reported under: its own, or for a Kafka topic one per
    /// partition (`kafka://HOST/TOPIC#P`), which take consecutive source indexes.
    pub fn names(&self) -> Vec<String> {
        match &self.input {
            Input::Stream(_) => vec![self.name.clone()],
            Input::Kafka(k) => k.lock().map(|k| k.names()).unwrap_or_default(),
        }
    }

    /// The Kafka input, to commit its offsets and summarise it after the run.
    pub fn kafka_input(&self) -> Option<Arc<Mutex<KafkaInput>>> {
        match &self.input {
            Input::Kafka(k) => Some(Arc::clone(k)),
            Input::Stream(_) => None,
        }
    }
}

/// The source names of `sources`, by source index (see [`Source::names`]).
pub fn names(sources: &[Source]) -> SourceNames {
    SourceNames::new(sources.iter().flat_map(Source::names).collect())
}

#[cfg(unix)]
fn stdin_is_regular_file() -> bool {
    use std::os::fd::AsFd;
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
        .and_then(|f| f.metadata().ok())
        .is_some_and(|m| m.is_file())
}

#[cfg(not(unix))]
fn stdin_is_regular_file() -> bool {
    false
}

/// Opens `--input` paths (stdin when there are none); a `kafka://` address is a topic,
/// read to its end offsets when `until_end`.
pub fn open(paths: &[PathBuf], until_end: bool) -> Result<Vec<Source>, String> {
    if paths.is_empty() {
        return Ok(vec![Source::stdin()]);
    }
    paths
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                Ok(Source::stdin())
            } else if let Some(url) = p.to_str().filter(|u| KafkaUrl::is_kafka(u)) {
                Source::kafka(url, until_end)
            } else {
                Source::file(p).map_err(|e| format!("cannot open input {}: {e}", p.display()))
            }
        })
        .collect()
}

/// Starts the reader thread over `sources` (read in order). Returns the receiving end and
/// the thread handle.
pub fn spawn(sources: Vec<Source>) -> (Receiver<Message>, JoinHandle<()>) {
    let (tx, rx) = bounded(4);
    let handle = std::thread::Builder::new()
        .name("throughline-reader".into())
        .spawn(move || read_all(sources, &tx))
        .unwrap_or_else(|e| panic!("cannot start the reader thread: {e}"));
    (rx, handle)
}

const READ_SIZE: usize = 256 * 1024;

fn read_all(sources: Vec<Source>, tx: &Sender<Message>) {
    let mut next_index: u16 = 0;
    for source in sources {
        let index = next_index;
        next_index = next_index.saturating_add(source.names().len() as u16);
        let reader = match source.input {
            Input::Stream(reader) => reader,
            Input::Kafka(kafka) => {
                let read = match kafka.lock() {
                    Ok(mut k) => k.read(index, tx),
                    Err(_) => Err(format!("{}: the reader failed", source.name)),
                };
                match read {
                    Ok(true) => continue,
                    Ok(false) => return, // the engine stopped
                    Err(e) => {
                        let _ = tx.send(Message::Failed(e));
                        return;
                    }
                }
            }
        };
        let mut source = (source.name, reader);
        let mut splitter = Splitter::new(index);
        loop {
            let mut buf = std::mem::take(&mut splitter.carry);
            let filled = buf.len();
            buf.resize(filled + READ_SIZE, 0);
            let n = match source.1.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    buf.truncate(filled);
                    splitter.carry = buf;
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Message::Failed(format!("cannot read {}: {e}", source.0)));
                    return;
                }
            };
            buf.truncate(filled + n);
            let batch = splitter.split(buf, n == 0);
            if !batch.lines.is_empty() && tx.send(Message::Batch(batch)).is_err() {
                return; // the engine stopped
            }
            if n == 0 {
                break;
            }
        }
    }
    let _ = tx.send(Message::End);
}

/// Splits a byte stream into lines, carrying a partial line to the next read.
struct Splitter {
    source: u16,
    next_number: u64,
    carry: Vec<u8>,
    /// Bytes of an over-long line skipped so far (0 when not skipping).
    skipping: u64,
}

impl Splitter {
    fn new(source: u16) -> Splitter {
        Splitter {
            source,
            next_number: 1,
            carry: Vec::new(),
            skipping: 0,
        }
    }

    /// Splits `buf` (carry + new bytes); `eof` ends a final line without `\n`.
    fn split(&mut self, buf: Vec<u8>, eof: bool) -> Batch {
        let read_at = Instant::now();
        let mut lines = Vec::new();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &buf) {
            self.push_line(&mut lines, &buf, start, nl);
            start = nl + 1;
        }
        let rest = buf.len() - start;
        if eof {
            if rest > 0 || self.skipping > 0 {
                self.push_line(&mut lines, &buf, start, buf.len());
            }
        } else if self.skipping > 0 || rest > MAX_LINE_BYTES + 1 {
            self.skipping += rest as u64;
        } else {
            self.carry = buf[start..].to_vec();
        }
        Batch {
            buf,
            lines,
            read_at,
            wall_ms: None,
            ahead: Vec::new(),
            boundary: crate::engine::input::Boundary::Any,
        }
    }

    /// Records the line `buf[start..end]` (or the end of a skipped over-long line).
    fn push_line(&mut self, lines: &mut Vec<LineRef>, buf: &[u8], start: usize, end: usize) {
        let number = self.next_number;
        self.next_number += 1;
        let skipped = std::mem::take(&mut self.skipping);
        let length = skipped + (end - start) as u64;
        // MAX + 1 leaves room for a trailing `\r`, which does not count (SPEC section 1).
        if length > (MAX_LINE_BYTES + 1) as u64 {
            lines.push(LineRef {
                source: self.source,
                number,
                start,
                end: start,
                too_long: Some(length),
                residue: false,
                cited_as: None,
            });
        } else if !is_blank(&buf[start..end]) {
            lines.push(LineRef {
                source: self.source,
                number,
                start,
                end,
                too_long: None,
                residue: false,
                cited_as: None,
            });
        }
    }
}

/// A blank line: nothing but JSON white space (space, tab, CR).
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<(u64, Result<Vec<u8>, u64>)> {
        let mut splitter = Splitter::new(0);
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut buf = std::mem::take(&mut splitter.carry);
            buf.extend_from_slice(chunk);
            let batch = splitter.split(buf, i + 1 == chunks.len());
            for l in &batch.lines {
                out.push((
                    l.number,
                    l.too_long.map_or_else(|| Ok(batch.bytes(l).to_vec()), Err),
                ));
            }
        }
        out
    }

    #[test]
    fn splits_across_reads_and_skips_blanks() {
        let got = lines_of(&[b"a\n\nb", b"c\r\n \t\r\nd", b""]);
        assert_eq!(
            got,
            vec![
                (1, Ok(b"a".to_vec())),
                (3, Ok(b"bc\r".to_vec())),
                (5, Ok(b"d".to_vec()))
            ]
        );
    }

    #[test]
    fn over_long_lines_are_skipped_not_buffered() {
        let big = vec![b'x'; MAX_LINE_BYTES + 10];
        let got = lines_of(&[b"a\n", &big[..600_000], &big[600_000..], b"\nb\n", b""]);
        assert_eq!(
            got,
            vec![
                (1, Ok(b"a".to_vec())),
                (2, Err((MAX_LINE_BYTES + 10) as u64)),
                (3, Ok(b"b".to_vec()))
            ]
        );
        // exactly at the limit, plus a CR, is still a line
        let mut edge = vec![b'y'; MAX_LINE_BYTES];
        edge.extend_from_slice(b"\r\n");
        let got = lines_of(&[&edge, b""]);
        assert!(got[0].1.is_ok());
    }
}
