//! What the engine takes in: batches of lines read from a source, and the other messages
//! (lookups, explanations, the end) that share their channel. The readers (`io::source`,
//! `io::kafka`), the server and the event log all speak this protocol; the engine defines it.

use std::time::Instant;

use crossbeam_channel::Sender;

use crate::dataflow::{EventFacts, Origin};
use crate::event::{Event, Kind, MAX_LINE_BYTES, Rejection};
use crate::spec::Spec;

/// One line of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef {
    /// Index of the source the line came from.
    pub source: u16,
    /// 1-based line number within its source.
    pub number: u64,
    /// Byte range of the line in the batch buffer (without `\n`).
    pub start: usize,
    /// End of the range.
    pub end: usize,
    /// `Some(length)` for a line longer than the limit, whose bytes were skipped.
    pub too_long: Option<u64>,
    /// The bytes are a compacted line's [`crate::event::residue::Residue`] (from the event
    /// log), not a line.
    pub residue: bool,
    /// The (source, line) to cite in dead letters and explanations in place of
    /// (`source`, `number`): a logged record that `serve` read from Kafka is cited by its
    /// partition and offset, while `number` stays its position in the log.
    pub cited_as: Option<Citation>,
}

/// A (source index, line number) pair as dead letters and explanations cite it.
pub type Citation = (u16, u64);

impl LineRef {
    /// The (source, line) dead letters and explanations cite.
    pub fn cited(&self) -> Citation {
        self.cited_as.unwrap_or((self.source, self.number))
    }
}

/// Lines read by one `read` call, with the instant they were read.
#[derive(Debug)]
pub struct Batch {
    /// The bytes the lines point into.
    pub buf: Vec<u8>,
    /// The complete, non-blank lines.
    pub lines: Vec<LineRef>,
    /// When these bytes were read.
    pub read_at: Instant,
    /// The wall clock to judge these lines by (a replayed log's receipt time); `None` means
    /// the machine's clock now.
    pub wall_ms: Option<u64>,
    /// The lines parsed ahead of admission, one per line ([`Batch::parse_ahead`]); empty
    /// when they were not, and the engine parses them as it admits them.
    pub ahead: Vec<Ahead>,
    /// Whether a published group may, must or must not end after this batch.
    pub boundary: Boundary,
}

/// Where the engine may end a published group of changes (see [`crate::engine::output::Publish`]).
///
/// Live, the engine ends a group at the end of every round. A server that restarts replays
/// its log and must reproduce, exactly, the groups a sink had sent but not yet seen
/// confirmed (so that what the sink sends again is the identical records): the replay marks
/// the batches that end such groups [`Boundary::Cut`] and those in between
/// [`Boundary::Hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Boundary {
    /// Wherever the engine's rounds end (live input, and most of a replay).
    #[default]
    Any,
    /// No group ends after this batch.
    Hold,
    /// A group ends right after this batch: the round ends here and publishes the current
    /// clock value.
    Cut,
}

/// A line parsed ahead of admission: `None` for a line that is not parsed (a compacted
/// line, an over-long one, or one already taken); otherwise the event with its facts
/// (`None` for a `forget`, which has none; sequence number, arrival and origin still to
/// be set), or why it is a dead letter.
pub type Ahead = Option<Result<(Event, Option<EventFacts>), Rejection>>;

impl Batch {
    /// A batch of whole lines (no `\n`), numbered from `first_number`, from source `source`;
    /// each line is flagged as a residue or not, and may say how it is cited (see
    /// [`LineRef::cited_as`]).
    pub fn of_lines(
        source: u16,
        first_number: u64,
        lines: &[(&[u8], bool, Option<Citation>)],
        wall_ms: Option<u64>,
    ) -> Batch {
        let mut buf = Vec::with_capacity(lines.iter().map(|(l, _, _)| l.len()).sum());
        let mut refs = Vec::with_capacity(lines.len());
        for (i, &(line, residue, cited_as)) in lines.iter().enumerate() {
            let start = buf.len();
            buf.extend_from_slice(line);
            refs.push(LineRef {
                source,
                number: first_number + i as u64,
                start,
                end: buf.len(),
                too_long: (!residue && line.len() > MAX_LINE_BYTES + 1)
                    .then_some(line.len() as u64),
                residue,
                cited_as,
            });
        }
        Batch {
            buf,
            lines: refs,
            read_at: Instant::now(),
            wall_ms,
            ahead: Vec::new(),
            boundary: Boundary::Any,
        }
    }

    /// Parses every line and derives its facts ([`crate::event::parse`],
    /// [`EventFacts::of`]): all of admission that does not depend on what came before, done
    /// on the thread that calls this rather than on the dataflow worker that admits the
    /// lines. The events' JSON bodies are dropped here once their facts are taken.
    pub fn parse_ahead(&mut self, spec: &Spec) {
        let ahead = self.lines.iter().map(|line| {
            if line.residue || line.too_long.is_some() {
                return None;
            }
            let parsed = crate::event::parse(self.bytes(line), spec, self.wall_ms);
            Some(parsed.map(|mut event| {
                let facts = (event.kind != Kind::Forget)
                    .then(|| EventFacts::of(0, &event, spec, 0, Origin::default()));
                event.body = serde_json::Map::new();
                (event, facts)
            }))
        });
        self.ahead = ahead.collect();
    }

    /// The bytes of a line.
    pub fn bytes(&self, line: &LineRef) -> &[u8] {
        &self.buf[line.start..line.end]
    }
}

/// What the engine receives: from the reader thread, the server and the event log.
#[derive(Debug)]
pub enum Message {
    /// More lines.
    Batch(Batch),
    /// A read failed: the message says which source and why.
    Failed(String),
    /// A profile lookup (`GET /v1/profiles/...`): the answer goes back on the channel.
    Lookup(
        crate::event::Ident,
        Sender<Result<Option<serde_json::Value>, String>>,
    ),
    /// An explanation (`explain`, `GET /v1/profiles/.../explain`) of the profile of an
    /// identifier at a clock value (`None`: the current clock); the answer, with the time
    /// it took, goes back on the channel.
    Explain(
        crate::event::Ident,
        Option<u64>,
        Sender<(crate::explain::Outcome, std::time::Duration)>,
    ),
    /// A change of a view (`PUT` and `DELETE /v1/views/NAME`, or their replay from the data
    /// directory), applied after every line sent before it: the answer says when it took
    /// effect.
    View(ViewChange, ViewLogger, Sender<Result<ViewApplied, String>>),
    /// The rows a view would have now, without defining it (the console's dry run): its
    /// text must define it.
    Preview(ViewChange, Sender<Result<ViewPreview, String>>),
    /// A rebuild's switch-over, to the engine it replaces: publish what is pending, hand
    /// every output over on the channel ([`super::Handover`]) and stop.
    Release(Sender<Box<super::Handover>>),
    /// A rebuild's switch-over, to the engine that replaces another: once every line sent
    /// before it is published, take over the outputs the other handed over and publish, at
    /// one engine time, the changes from its rows to this engine's (`engine::switch`), as
    /// prepared while both ran.
    Adopt(
        Box<super::Handover>,
        Box<super::Prepared>,
        Sender<Result<super::Switched, String>>,
    ),
    /// All sources are exhausted.
    End,
}

/// A change of a view on a running engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewChange {
    /// The view's name.
    pub name: String,
    /// The whole spec text defining it from now on (checked by the caller), or `None` to
    /// delete it.
    pub text: Option<String>,
    /// The spec's whole text once the change is made (lookups and explanations name the
    /// views by it).
    pub spec: String,
}

/// The engine's input channel as the server's threads send to it: the channel of the engine
/// running now, replaced by a rebuild's switch-over ([`EngineLink::replace`]).
#[derive(Debug)]
pub struct EngineLink(std::sync::RwLock<Sender<Message>>);

impl EngineLink {
    /// A link to the engine reading `tx`'s channel.
    pub fn new(tx: Sender<Message>) -> EngineLink {
        EngineLink(std::sync::RwLock::new(tx))
    }

    /// Sends `message` to the engine running now.
    pub fn send(&self, message: Message) -> Result<(), crossbeam_channel::SendError<Message>> {
        match self.0.read() {
            Ok(tx) => tx.send(message),
            Err(_) => Err(crossbeam_channel::SendError(message)),
        }
    }

    /// Links to the engine reading `tx`'s channel from now on; the previous channel.
    pub fn replace(&self, tx: Sender<Message>) -> Option<Sender<Message>> {
        self.0
            .write()
            .ok()
            .map(|mut old| std::mem::replace(&mut *old, tx))
    }
}

/// Records a view change durably before the engine makes it, given the log position and
/// engine time it takes effect at: a crash then never leaves a change that outputs saw but
/// the data directory does not know (`None`: a replay, already recorded).
pub struct ViewLogger(pub Option<RecordView>);

/// Records a view change, given its log position and engine time ([`ViewLogger`]).
pub type RecordView = Box<dyn FnOnce(u64, u64) -> Result<(), String> + Send>;

impl std::fmt::Debug for ViewLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ViewLogger(..)"
        } else {
            "ViewLogger(none)"
        })
    }
}

/// The rows a view would have now ([`Message::Preview`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewPreview {
    /// How many.
    pub rows: usize,
    /// The first ones by key, as snapshot lines (at most [`PREVIEW_ROWS`]).
    pub first: Vec<String>,
}

/// How many rows a preview shows.
pub const PREVIEW_ROWS: usize = 20;

/// When a [`ViewChange`] took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewApplied {
    /// The engine time its rows changed at (and are published at).
    pub time: u64,
    /// The input lines taken before it (in `serve`, the log line it follows).
    pub position: u64,
    /// The view's rows once it took effect.
    pub rows: usize,
}
