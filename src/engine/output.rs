//! What the engine puts out: the change stream and snapshot formats of SPEC section 7, live
//! subscriptions, and dead letters.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::dataflow::add_count;
use crate::dataflow::views::{self, Fact, json_string, milli_json};
use crate::event::DeadReason;
use crate::event::Ident;
use crate::spec::Spec;

/// One change of the stream (SPEC section 7).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Engine clock (epoch ms) at which the change holds.
    pub time: u64,
    /// View name.
    pub view: String,
    /// Profile key, `type:value`.
    pub key: String,
    /// +1 or -1.
    pub diff: isize,
    /// The row, a JSON object.
    pub row: String,
}

impl Change {
    /// The NDJSON line (without `\n`).
    pub fn json(&self) -> String {
        format!(
            "{{\"view\":{},\"time\":{},\"key\":{},\"diff\":{},\"row\":{}}}",
            json_string(&self.view),
            self.time,
            json_string(&self.key),
            self.diff,
            self.row
        )
    }
}

/// The changes of `diffs` ((time, view, key, row) → diff) whose diff is not 0, in that
/// order: consolidation (SPEC section 7).
pub fn changes_of(diffs: BTreeMap<(u64, String, String, String), isize>) -> Vec<Change> {
    diffs
        .into_iter()
        .filter(|(_, diff)| *diff != 0)
        .map(|((time, view, key, row), diff)| Change {
            time,
            view,
            key,
            diff,
            row,
        })
        .collect()
}

/// The changes of `changes`, consolidated and in the change stream's order (SPEC section 7):
/// those with equal (time, view, key, row) summed, those summing to 0 dropped, sorted by
/// (time, view, key) and within that by diff (a retraction before an insertion), then row:
/// the order of [`Change`]'s fields.
pub fn consolidated(changes: Vec<Change>) -> Vec<Change> {
    let mut out = consolidated_by_row(changes);
    // sorted by (time, view, key, row) already: only the few changes of one (time, view,
    // key) move, retractions first
    for group in out.chunk_by_mut(|a, b| (a.time, &a.view, &a.key) == (b.time, &b.view, &b.key)) {
        if group.len() > 1 {
            group.sort_unstable();
        }
    }
    out
}

/// The same consolidation as [`changes_of`] for changes not yet consolidated: those with
/// equal (time, view, key, row) summed, those summing to 0 dropped, in that order.
fn consolidated_by_row(mut changes: Vec<Change>) -> Vec<Change> {
    // stable: the engine's changes come in runs sorted alike (one per worker and round,
    // `dataflow::views::Renderer::sort`), which a stable sort merges in linear time
    changes
        .sort_by(|a, b| (a.time, &a.view, &a.key, &a.row).cmp(&(b.time, &b.view, &b.key, &b.row)));
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for change in changes {
        match out.last_mut() {
            Some(last)
                if (last.time, &last.view, &last.key, &last.row)
                    == (change.time, &change.view, &change.key, &change.row) =>
            {
                last.diff += change.diff;
            }
            _ => {
                if out.last().is_some_and(|last| last.diff == 0) {
                    out.pop();
                }
                out.push(change);
            }
        }
    }
    if out.last().is_some_and(|last| last.diff == 0) {
        out.pop();
    }
    out
}

/// An output of the change stream besides the NDJSON writer: a sink (a Kafka topic, a
/// file the server keeps), see [`crate::io::sink`].
pub trait Publish: Send {
    /// Takes one published group: consolidated changes sorted by (time, view, key) (SPEC
    /// section 7; on live input the latest time may come in several groups), and the
    /// group's *position*: the number of input lines the engine had taken in when it
    /// published it (in `serve`, the log line number of the last record it reflects).
    /// Every publication is passed on, empty ones too, so a sink always knows how far the
    /// input is published. Positions never go back, and the groups are a pure function of
    /// the input and of the positions at which they end ([`crate::engine::input::Boundary`]).
    /// `time` is the engine time the publication completes: the views are at `time` once it
    /// is applied (every change has a time `<= time`). It must not block: delivery happens
    /// elsewhere.
    fn publish(&mut self, changes: &[Change], position: u64, time: u64) -> io::Result<()>;
    /// Waits until everything published is written; says what was written, in a line, or
    /// why some of it could not be.
    fn finish(&mut self) -> io::Result<String>;
}

/// The rows of every view at one time: view → (key, row) → multiplicity.
///
/// Hash maps, not ordered ones: the engine applies every published change here (about
/// two per event on a replay with decay), and finding a row by hash costs one probe where an
/// ordered map of strings compares the view, key and row at every level. Lines come out
/// sorted ([`Snapshot::lines`], [`Snapshot::lines_of`]), which is the only place order
/// matters. The per-view maps grow without stalls (`griddle`), as a live server applies
/// changes to its views between requests.
///
/// Each view's rows are kept in [`SHARDS`] maps by a hash of the key, so that two
/// snapshots can be compared a shard at a time ([`Snapshot::changes_in`]): a rebuild's
/// switch-over compares the serving engine's rows with the new engine's while both run,
/// holding each one's lock only for a shard.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    views: BTreeMap<String, ViewRows>,
}

/// How many maps each view's rows are split into ([`Snapshot`]): enough that comparing
/// one holds the views' locks well under a millisecond. At 1M events of state and 256
/// shards, one comparison held both engines' views for up to 5 ms, and the serving
/// engine's publication waited up to 8 ms for them. An empty map allocates nothing.
pub const SHARDS: usize = 1 << SHARD_BITS;

/// `log2(SHARDS)`: [`shard_of`] takes the hash's top bits.
const SHARD_BITS: u32 = 12;

/// One view's rows: (key, row) → multiplicity.
type Rows = griddle::HashMap<(String, String), isize>;

/// One view's rows in [`SHARDS`] maps, each key's in the map [`shard_of`] it.
#[derive(Debug, Clone)]
struct ViewRows(Vec<Rows>);

impl Default for ViewRows {
    fn default() -> ViewRows {
        ViewRows((0..SHARDS).map(|_| Rows::default()).collect())
    }
}

impl ViewRows {
    fn shard(&self, shard: usize) -> Option<&Rows> {
        self.0.get(shard)
    }

    fn count(&self, pair: &(String, String)) -> isize {
        self.0
            .get(shard_of(&pair.0))
            .and_then(|rows| rows.get(pair).copied())
            .unwrap_or(0)
    }

    fn len(&self) -> usize {
        self.0.iter().map(|rows| rows.len()).sum()
    }

    fn iter(&self) -> impl Iterator<Item = (&(String, String), &isize)> {
        self.0.iter().flat_map(|rows| rows.iter())
    }
}

/// The shard of [`SHARDS`] a key's rows are kept in: a multiply-rotate hash of the key's
/// bytes, eight at a time (the same in every snapshot, so two can be compared shard by
/// shard; cheap, as every published change computes it).
pub fn shard_of(key: &str) -> usize {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut hash: u64 = key.len() as u64;
    let mut words = key.as_bytes().chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    for (to, from) in last.iter_mut().zip(words.remainder()) {
        *to = *from;
    }
    hash = (hash.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    (hash >> (64 - SHARD_BITS)) as usize
}

impl Snapshot {
    /// Applies a change.
    pub fn apply(&mut self, change: &Change) {
        self.apply_owned(change.clone());
    }

    /// Applies a change it may keep the strings of (no copy of the key or row).
    pub fn apply_owned(&mut self, change: Change) {
        let view = match self.views.get_mut(&change.view) {
            Some(rows) => rows,
            None => self.views.entry(change.view).or_default(),
        };
        if let Some(rows) = view.0.get_mut(shard_of(&change.key)) {
            add_count(rows, (change.key, change.row), change.diff);
        }
    }

    /// The multiplicity of row `pair.1` under key `pair.0` in `view`.
    pub fn count(&self, view: &str, pair: &(String, String)) -> isize {
        self.views.get(view).map_or(0, |rows| rows.count(pair))
    }

    /// The snapshot lines, sorted by view then key. A row whose multiplicity is not 1 would
    /// be an engine defect; it is reported rather than hidden.
    pub fn lines(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(self.len());
        for (view, rows) in &self.views {
            let mut sorted: Vec<(&(String, String), &isize)> = rows.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut previous: Option<&str> = None;
            for ((key, row), count) in sorted {
                if *count != 1 || previous == Some(key) {
                    return Err(format!(
                        "internal error: view {view} holds key {key} {count} times"
                    ));
                }
                previous = Some(key);
                out.push(line(view, key, row));
            }
        }
        Ok(out)
    }

    /// One view's snapshot lines, sorted by key.
    pub fn lines_of(&self, view: &str) -> Vec<String> {
        let Some(rows) = self.views.get(view) else {
            return Vec::new();
        };
        let mut sorted: Vec<&(String, String)> = rows
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(row, _)| row)
            .collect();
        sorted.sort_unstable();
        sorted
            .into_iter()
            .map(|(key, row)| line(view, key, row))
            .collect()
    }

    /// The views that have rows here, or had.
    pub fn view_names(&self) -> impl Iterator<Item = &String> {
        self.views.keys()
    }

    /// The changes that make shard `shard` of `view` here into the same in `to`, unordered
    /// and at `time`: each row's multiplicity in `to` minus its multiplicity here, where not
    /// 0: every row of `to` this lacks as `+1`, every row this has that `to` lacks as `-1`.
    pub fn changes_in(
        &self,
        to: &Snapshot,
        view: &str,
        shard: usize,
        time: u64,
        out: &mut Vec<Change>,
    ) {
        let empty = Rows::default();
        fn rows<'a>(s: &'a Snapshot, view: &str, shard: usize, empty: &'a Rows) -> &'a Rows {
            s.views
                .get(view)
                .and_then(|rows| rows.shard(shard))
                .unwrap_or(empty)
        }
        let (mine, theirs) = (
            rows(self, view, shard, &empty),
            rows(to, view, shard, &empty),
        );
        let mut push = |(key, row): &(String, String), diff: isize| {
            out.push(Change {
                time,
                view: view.to_string(),
                key: key.clone(),
                diff,
                row: row.clone(),
            });
        };
        for (pair, count) in theirs {
            let diff = count - mine.get(pair).copied().unwrap_or(0);
            if diff != 0 {
                push(pair, diff);
            }
        }
        for (pair, count) in mine {
            if !theirs.contains_key(pair) {
                push(pair, -count);
            }
        }
    }

    /// The changes, at `time`, that make this snapshot into `to`: every row of `to` it
    /// lacks as `+1`, every row it has that `to` lacks as `-1` (consolidated and sorted by
    /// [`consolidated`]). The whole comparison at once: a rebuild's switch-over works it
    /// out a shard at a time instead ([`super::switch::Preparing`]).
    pub fn changes_to(&self, to: &Snapshot, time: u64) -> Vec<Change> {
        let names: std::collections::BTreeSet<&String> =
            self.view_names().chain(to.view_names()).collect();
        let mut out = Vec::new();
        for view in names {
            for shard in 0..SHARDS {
                self.changes_in(to, view, shard, time, &mut out);
            }
        }
        consolidated(out)
    }

    /// Number of rows of one view.
    pub fn count_of(&self, view: &str) -> usize {
        self.views.get(view).map_or(0, |rows| rows.len())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.views.values().map(|rows| rows.len()).sum()
    }

    /// Whether no view has a row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot line (SPEC section 7).
fn line(view: &str, key: &str, row: &str) -> String {
    format!(
        "{{\"view\":{},\"key\":{},\"row\":{}}}",
        json_string(view),
        json_string(key),
        row
    )
}

/// The views while running: the current rows and the live change subscribers, kept under
/// one lock so a subscriber gets a snapshot and then exactly the changes after it.
#[derive(Default)]
pub struct LiveViews {
    /// The current rows of every view.
    pub snapshot: Snapshot,
    /// The engine time the rows are at: the last one published (0 before any).
    pub time: u64,
    /// The views that exist now (the spec's, and those changed while running).
    pub names: std::collections::BTreeSet<String>,
    subscribers: Vec<Subscriber>,
    /// While a rebuild prepares its switch-over: every (view, key, row) changed since it
    /// began ([`super::switch::Preparing`]).
    journal: Option<std::collections::HashSet<(String, String, String)>>,
}

/// How many published changes a subscriber may hold unread before it is dropped (so one
/// slow client cannot grow the server's memory without bound). Counted in whole
/// publications, of every view, as it holds them ([`Subscription::next`]); a publication is
/// sent to a subscriber that holds fewer, however large it is (a rebuild's switch-over).
pub const SUBSCRIBER_QUEUE: usize = 100_000;

struct Subscriber {
    view: String,
    tx: crossbeam_channel::Sender<Arc<Vec<Change>>>,
    /// The changes of the publications sent and not yet taken.
    held: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

/// The receiving end of a subscription.
pub struct Subscription {
    view: String,
    /// Each publication that changed the view, whole (shared by every subscriber: the
    /// engine's thread neither copies nor renders it).
    published: crossbeam_channel::Receiver<Arc<Vec<Change>>>,
    held: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The view's changes of the next publication, as change-stream lines, in order (within
    /// `timeout`). Disconnected once the subscription has ended and everything published
    /// before is taken.
    pub fn next(
        &self,
        timeout: Duration,
    ) -> Result<Vec<String>, crossbeam_channel::RecvTimeoutError> {
        let published = self.published.recv_timeout(timeout)?;
        self.held.fetch_sub(published.len(), Ordering::AcqRel);
        Ok(published
            .iter()
            .filter(|c| c.view == self.view)
            .map(Change::json)
            .collect())
    }

    /// Whether the subscription ended because the subscriber fell too far behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

impl LiveViews {
    /// Applies published changes and sends them to the subscribers of their views
    /// (dropping subscribers that went away).
    pub fn apply(&mut self, changes: &[Change]) {
        self.apply_shared(Arc::new(changes.to_vec()));
    }

    /// [`LiveViews::apply`] for changes the subscribers may share as they are.
    pub fn apply_shared(&mut self, changes: Arc<Vec<Change>>) {
        for change in changes.iter() {
            self.snapshot.apply(change);
        }
        if let Some(journal) = &mut self.journal {
            for c in changes.iter() {
                journal.insert((c.view.clone(), c.key.clone(), c.row.clone()));
            }
        }
        self.notify(changes);
    }

    /// Puts `rows` in place of the current ones (`changes` lead from these to those) and
    /// sends the changes to the subscribers, as [`LiveViews::apply`] would: a rebuild's
    /// switch-over, whose new rows are at hand. The rows replaced.
    pub fn replace(&mut self, rows: Snapshot, changes: Arc<Vec<Change>>) -> Snapshot {
        let old = std::mem::replace(&mut self.snapshot, rows);
        self.notify(changes);
        old
    }

    /// Starts (`true`) or stops keeping the journal of changed rows; what it held.
    pub fn journal(&mut self, keep: bool) -> std::collections::HashSet<(String, String, String)> {
        let held = self.journal.take().unwrap_or_default();
        if keep {
            self.journal = Some(std::collections::HashSet::new());
        }
        held
    }

    /// Sends published changes to the subscribers of their views, each the publication
    /// whole (dropping subscribers that went away or hold too much unread).
    fn notify(&mut self, changes: Arc<Vec<Change>>) {
        if self.subscribers.is_empty() || changes.is_empty() {
            return;
        }
        // sorted by (time, view, key) (SPEC section 7): at one time, as a switch-over's
        // hundreds of thousands are, a view's changes are found without a pass over them
        let one_time = changes.first().map(|c| c.time) == changes.last().map(|c| c.time);
        let changed = |view: &str| match one_time {
            true => {
                let at = changes.partition_point(|c| c.view.as_str() < view);
                changes.get(at).is_some_and(|c| c.view == view)
            }
            false => changes.iter().any(|c| c.view == view),
        };
        self.subscribers.retain(|s| {
            if !changed(&s.view) {
                return true;
            }
            if s.held.load(Ordering::Acquire) >= SUBSCRIBER_QUEUE {
                s.lagged.store(true, Ordering::Release);
                return false;
            }
            s.held.fetch_add(changes.len(), Ordering::AcqRel);
            s.tx.send(Arc::clone(&changes)).is_ok()
        });
    }

    /// Ends the subscriptions to `view` (deleted: its last changes were its rows' `-1`s).
    pub fn end_view(&mut self, view: &str) {
        self.subscribers.retain(|s| s.view != view);
    }

    /// The view's current rows (snapshot lines) and a subscription to its later changes.
    pub fn subscribe(&mut self, view: &str) -> (Vec<String>, Subscription) {
        // unbounded, but never more than one publication past `SUBSCRIBER_QUEUE` changes
        let (tx, published) = crossbeam_channel::unbounded();
        let lagged = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        self.subscribers.push(Subscriber {
            view: view.to_string(),
            tx,
            held: Arc::clone(&held),
            lagged: Arc::clone(&lagged),
        });
        (
            self.snapshot.lines_of(view),
            Subscription {
                view: view.to_string(),
                published,
                held,
                lagged,
            },
        )
    }
}

/// A line that could not be used (SPEC section 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Source name (`-` for stdin).
    pub source: String,
    /// 1-based line number in that source.
    pub line: u64,
    /// The reason.
    pub reason: DeadReason,
    /// Details for a person.
    pub detail: String,
}

impl DeadLetter {
    /// The NDJSON record (without `\n`).
    pub fn json(&self) -> String {
        format!(
            "{{\"source\":{},\"line\":{},\"reason\":\"{}\",\"detail\":{}}}",
            json_string(&self.source),
            self.line,
            self.reason.code(),
            json_string(&self.detail)
        )
    }
}

/// Dead letters: counted always, written as NDJSON when a writer is given, otherwise the
/// first few are kept for the summary on stderr.
pub struct DeadLetters {
    writer: Option<Box<dyn Write + Send>>,
    counts: BTreeMap<DeadReason, u64>,
    examples: Vec<DeadLetter>,
}

/// How many dead letters the stderr summary shows when they are not written to a file.
pub const EXAMPLES: usize = 5;

impl DeadLetters {
    /// Dead letters written to `writer`, or only summarised when `None`.
    pub fn new(writer: Option<Box<dyn Write + Send>>) -> DeadLetters {
        DeadLetters {
            writer,
            counts: BTreeMap::new(),
            examples: Vec::new(),
        }
    }

    /// Records one dead letter.
    pub fn push(&mut self, letter: DeadLetter) -> io::Result<()> {
        *self.counts.entry(letter.reason).or_insert(0) += 1;
        match &mut self.writer {
            Some(w) => writeln!(w, "{}", letter.json()),
            None => {
                if self.examples.len() < EXAMPLES {
                    self.examples.push(letter);
                }
                Ok(())
            }
        }
    }

    /// Flushes the writer, if any.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Counts per reason.
    pub fn counts(&self) -> &BTreeMap<DeadReason, u64> {
        &self.counts
    }

    /// The first few dead letters, when not written to a file.
    pub fn examples(&self) -> &[DeadLetter] {
        &self.examples
    }
}

/// A profile as JSON, the answer to `GET /v1/profiles/{type}:{value}`: its key,
/// identifiers, score, active signals, consent per purpose, traits, and the views it is in.
pub fn profile_json(spec: &Spec, profile: &Ident, facts: &[Fact]) -> serde_json::Value {
    let summary = views::summary(spec, facts);
    let score: serde_json::Value =
        serde_json::from_str(&milli_json(summary.score_milli)).unwrap_or_default();
    let consent: serde_json::Map<String, serde_json::Value> = summary
        .consent
        .iter()
        .map(|(name, granted)| (name.to_string(), serde_json::Value::from(*granted)))
        .collect();
    serde_json::json!({
        "profile": profile.key(&spec.identity),
        "identifiers": summary
            .identifiers
            .iter()
            .map(|m| m.key(&spec.identity))
            .collect::<Vec<_>>(),
        "score": score,
        "signals": summary.signals,
        "consent": consent,
        "traits": serde_json::Value::Object(summary.traits),
        "views": summary.views,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(view: &str, key: &str, diff: isize, row: &str) -> Change {
        Change {
            time: 1,
            view: view.into(),
            key: key.into(),
            diff,
            row: row.into(),
        }
    }

    /// A publication larger than a subscriber may hold (a rebuild's switch-over) reaches a
    /// subscriber that keeps up, whole and in order; one that holds that much unread is
    /// dropped at the next publication that concerns it, after what it holds.
    #[test]
    fn a_subscriber_takes_a_publication_larger_than_it_may_hold() {
        let mut views = LiveViews::default();
        let (rows, subscription) = views.subscribe("a");
        assert!(rows.is_empty());
        let (_, quiet) = views.subscribe("c");
        // at one time, sorted by view as every publication is
        let big: Vec<Change> = (0..SUBSCRIBER_QUEUE + 10)
            .map(|i| {
                change(
                    if i % 2 == 0 { "a" } else { "b" },
                    &format!("k{i}"),
                    1,
                    "{}",
                )
            })
            .collect();
        let (a, b): (Vec<Change>, Vec<Change>) = big.into_iter().partition(|c| c.view == "a");
        views.replace(Snapshot::default(), Arc::new([a, b].concat()));
        let wait = Duration::from_millis(10);
        let lines = subscription.next(wait).unwrap();
        assert_eq!(lines.len(), SUBSCRIBER_QUEUE / 2 + 5);
        assert!(lines[0].contains("\"key\":\"k0\"") && lines[1].contains("\"key\":\"k2\""));
        assert!(quiet.next(wait).is_err() && !quiet.lagged());
        // another view's changes are not sent to it
        views.apply(&[change("b", "x", 1, "{}")]);
        assert!(subscription.next(wait).is_err());
        // held unread: the next publication of its view still goes, the one after ends it
        let many: Vec<Change> = (0..SUBSCRIBER_QUEUE)
            .map(|i| change("a", &format!("m{i}"), 1, "{}"))
            .collect();
        views.apply_shared(Arc::new(many));
        views.apply(&[change("a", "late", 1, "{}")]);
        assert!(subscription.lagged());
        assert_eq!(subscription.next(wait).unwrap().len(), SUBSCRIBER_QUEUE);
        assert!(matches!(
            subscription.next(wait),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ));
    }

    /// The per-view count follows the rows through inserts, updates and removals.
    #[test]
    fn row_counts_follow_the_rows() {
        let mut s = Snapshot::default();
        s.apply(&change("a", "k1", 1, "{}"));
        s.apply(&change("a", "k2", 1, "{}"));
        s.apply(&change("b", "k1", 1, "{}"));
        // an update: the new row before the old one leaves, as consolidated order may have it
        s.apply(&change("a", "k1", 1, "{\"x\":1}"));
        s.apply(&change("a", "k1", -1, "{}"));
        assert_eq!(
            (s.count_of("a"), s.count_of("b"), s.count_of("c")),
            (2, 1, 0)
        );
        s.apply(&change("a", "k2", -1, "{}"));
        s.apply(&change("b", "k1", -1, "{}"));
        assert_eq!((s.count_of("a"), s.count_of("b"), s.len()), (1, 0, 1));
    }

    proptest::proptest! {
        /// Consolidating a `Vec` (publishing) and a `BTreeMap` (Kafka's pending changes)
        /// give the same changes in the same order, none with a zero diff; publishing's
        /// order is then that of a full sort.
        #[test]
        fn consolidation_of_a_vec_equals_that_of_a_map(
            updates in proptest::collection::vec(
                (0u64..3, 0usize..2, 0usize..3, -2isize..3, 0usize..3), 0..40),
        ) {
            let names = ["a", "b", "c"];
            let changes: Vec<Change> = updates
                .iter()
                .map(|&(time, view, key, diff, row)| Change {
                    time,
                    view: names[view].into(),
                    key: names[key].into(),
                    diff,
                    row: names[row].into(),
                })
                .collect();
            let mut map = BTreeMap::new();
            for c in &changes {
                *map.entry((c.time, c.view.clone(), c.key.clone(), c.row.clone()))
                    .or_insert(0) += c.diff;
            }
            let by_row = consolidated_by_row(changes.clone());
            proptest::prop_assert!(by_row.iter().all(|c| c.diff != 0));
            let mut sorted = changes_of(map);
            proptest::prop_assert_eq!(by_row, sorted.clone());
            // the stream's order is that of `Change`'s fields
            sorted.sort();
            proptest::prop_assert_eq!(consolidated(changes), sorted);
        }
    }
}
