//! The facts of every live accepted event, kept so that erasure (SPEC section 6) can retract
//! exactly what each event inserted, and so that explanations can cite the events behind a
//! profile. Erased events' facts are dropped from here at once, so
//! no raw value of theirs stays in memory beyond the retraction itself.
//!
//! Each event's facts are held encoded (`bincode`, variable-length integers) in one
//! allocation, about a third of what the decoded [`EventFacts`] with its vectors and
//! strings takes; they are decoded only when read (an erasure, an explanation).
//!
//! The index from identifiers to their events is built when something first reads it: an
//! insertion only appends `(identifier hash, seq)` pairs to a log, and a read files the
//! log into the index. A replay with no erasure and no explanation never builds it, and the
//! worker that inserts every event pays a few bytes per identifier instead of a hash-map
//! probe. The index is keyed by the identifier's 32-bit hash ([`Ident::short_hash`]), so
//! it holds no identifier's value; a key may stand for several identifiers, and every read
//! keeps only the events that really carry the one asked for.
//!
//! A large backlog (a replay's, read by its first erasure or explanation) is filed as one
//! sorted run of `(hash, seq)` pairs, radix-sorted and searched by bisection, rather than
//! pair by pair into the hash map: about a tenth of the time for millions of pairs. A run
//! is merged with a later backlog only when that backlog is at least as long, so filing
//! stays linear in the pairs filed; smaller backlogs (a live round's) go to the map.
//!
//! # Retirement (SPEC section 9)
//!
//! An event leaves the history once the clock reaches its horizon
//! ([`crate::dataflow::retention::Horizon::event_retires`]): from then on it only adds its
//! identifiers, links and records to the state (see [`crate::dataflow::retention`] for why).
//! It is counted in its identifier set ([`crate::dataflow::retention::Sets`]), which keeps
//! what an erasure needs to retract the set's retired events (how many), the greatest
//! record of each slot, and what an explanation cites (the last event, by source, line and
//! time). Chunks of the history whose events have all gone are freed, and the index drops the
//! pairs of departed events once they are as many as the rest: memory follows the events
//! within the horizon and the identifier sets, not every event ever received.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use bincode::Options;

use crate::dataflow::retention::{Horizon, Retention};
use crate::dataflow::{EventFacts, Seq};
use crate::event::Ident;

/// Live events' facts, in arrival order, indexed by identifier, and the retired ones by
/// identifier set.
pub struct History {
    /// Encoded events in the order pushed, in chunks of [`CHUNK`]: growing never copies the
    /// events held. A chunk whose events have all gone is freed (left empty).
    events: Vec<Vec<Option<Box<[u8]>>>>,
    /// The `seq` of each event of `events`, ascending (a keeper holds a share of the
    /// sequence numbers, [`super::keeper`]); freed with its chunk.
    seqs: Vec<Vec<Seq>>,
    /// The first `seq` of each chunk (kept when the chunk is freed).
    firsts: Vec<Seq>,
    /// Events held in each chunk.
    chunk_live: Vec<u32>,
    /// Events carrying an identifier with each hash, ascending (a map that grows without
    /// stalls), filed by [`History::catch_up`] from small backlogs.
    by_hash: griddle::HashMap<u32, Vec<Seq>>,
    /// Pairs filed in `by_hash` (kept, so that deciding whether to prune costs nothing).
    mapped: usize,
    /// `(hash, seq)` filed from large backlogs, sorted by hash and then seq. Erasure
    /// leaves its pairs here; they lead to emptied slots, which every read skips.
    run: Vec<(u32, Seq)>,
    /// `(identifier hash, seq)` for every identifier of the events pushed since.
    unindexed: Vec<(u32, Seq)>,
    /// Events pushed.
    pushed: usize,
    live: usize,
    /// Index pairs that lead to events gone (erased or retired).
    stale: usize,
    retention: Retention,
    horizon: Horizon,
    /// Live events by the clock at which they retire: `(retires, seq)`, earliest first.
    retiring: BinaryHeap<Reverse<(u64, Seq)>>,
}

impl Default for History {
    fn default() -> History {
        History::new(
            Retention::KeepAll,
            Horizon::of(&crate::spec::Spec::default_spec()),
        )
    }
}

/// Events per chunk of the history.
const CHUNK: usize = 1 << 14;

/// Above this many unfiled pairs, [`History::catch_up`] files them as a sorted run.
const BULK: usize = 1 << 12;

impl History {
    /// An empty history that retires events past `horizon` (with [`Retention::Retire`]).
    pub fn new(retention: Retention, horizon: Horizon) -> History {
        History {
            events: Vec::new(),
            seqs: Vec::new(),
            firsts: Vec::new(),
            chunk_live: Vec::new(),
            by_hash: griddle::HashMap::new(),
            mapped: 0,
            run: Vec::new(),
            unindexed: Vec::new(),
            pushed: 0,
            live: 0,
            stale: 0,
            retention,
            horizon,
            retiring: BinaryHeap::new(),
        }
    }

    /// Records an inserted event (its `seq` must be above every `seq` pushed before).
    pub fn push(&mut self, facts: EventFacts) {
        let seq = facts.seq;
        debug_assert!(
            self.seqs
                .last()
                .and_then(|s| s.last())
                .is_none_or(|&l| l < seq)
        );
        self.unindexed
            .extend(facts.idents.iter().map(|id| (id.short_hash(), seq)));
        let chunk = self.pushed / CHUNK;
        while self.events.len() <= chunk {
            self.events.push(Vec::new());
            self.seqs.push(Vec::new());
            self.firsts.push(seq);
            self.chunk_live.push(0);
        }
        if let (Some(events), Some(seqs)) = (self.events.get_mut(chunk), self.seqs.get_mut(chunk)) {
            if events.capacity() == 0 {
                events.reserve_exact(CHUNK);
                seqs.reserve_exact(CHUNK);
            }
            events.push(Some(encode(&facts)));
            seqs.push(seq);
        }
        if let Some(live) = self.chunk_live.get_mut(chunk) {
            *live += 1;
        }
        if self.retention == Retention::Retire {
            let retires = self.horizon.event_retires(facts.timestamp_ms);
            self.retiring.push(Reverse((retires, seq)));
        }
        self.pushed += 1;
        self.live += 1;
    }

    /// Retires every live event whose horizon the clock `now` has reached: each leaves the
    /// history, and is returned (the dataflow's inputs count it in its identifier set).
    pub fn retire(&mut self, now: u64) -> Result<Vec<EventFacts>, String> {
        let mut retired = Vec::new();
        while let Some(&Reverse((retires, seq))) = self.retiring.peek() {
            if retires > now {
                break;
            }
            self.retiring.pop();
            let Some(bytes) = self.vacate(seq) else {
                continue; // erased already
            };
            let facts = decode(&bytes)?;
            self.stale += facts.idents.len();
            retired.push(facts);
        }
        if !retired.is_empty() {
            self.prune();
        }
        Ok(retired)
    }

    /// Empties the slot of `seq`, freeing its chunk once every event in it has gone;
    /// returns what it held.
    fn vacate(&mut self, seq: Seq) -> Option<Box<[u8]>> {
        let (chunk, _) = position(&self.seqs, &self.firsts, seq)?;
        let bytes = self.slot_mut(seq)?.take()?;
        self.live -= 1;
        if let Some(live) = self.chunk_live.get_mut(chunk) {
            *live = live.saturating_sub(1);
            // the last chunk still grows
            if *live == 0
                && chunk + 1 < self.events.len()
                && let (Some(events), Some(seqs)) =
                    (self.events.get_mut(chunk), self.seqs.get_mut(chunk))
            {
                *events = Vec::new();
                *seqs = Vec::new();
            }
        }
        Some(bytes)
    }

    /// Drops the index pairs of departed events once they are at least as many as the
    /// others (so the index follows the live events, at a linear cost overall).
    fn prune(&mut self) {
        let filed = self.run.len() + self.mapped;
        if self.stale < (1 << 12) || self.stale * 2 < filed + self.unindexed.len() {
            return;
        }
        let (events, seqs, firsts) = (&self.events, &self.seqs, &self.firsts);
        let held = |seq: Seq| matches!(slot_in(events, seqs, firsts, seq), Some(Some(_)));
        self.run.retain(|&(_, seq)| held(seq));
        self.run.shrink_to_fit();
        self.unindexed.retain(|&(_, seq)| held(seq));
        let mut mapped = 0;
        self.by_hash.retain(|_, seqs| {
            seqs.retain(|&seq| held(seq));
            mapped += seqs.len();
            !seqs.is_empty()
        });
        self.mapped = mapped;
        self.stale = 0;
    }

    /// Whether the event `seq` is still held (not retired, not erased).
    pub fn is_live(&self, seq: Seq) -> bool {
        matches!(self.slot(seq), Some(Some(_)))
    }

    /// Files the events pushed since the last call in the index. Reads call it first; call
    /// it before lending the history out for reading ([`History::carrying`]), which
    /// otherwise scans the events not yet filed.
    pub fn catch_up(&mut self) {
        if self.unindexed.len() <= BULK || self.unindexed.len() < self.run.len() {
            for (hash, seq) in self.unindexed.drain(..) {
                self.by_hash.entry(hash).or_default().push(seq);
                self.mapped += 1;
            }
            if self.unindexed.capacity() > 1 << 16 {
                self.unindexed = Vec::new(); // after a large backlog, give its memory back
            }
            return;
        }
        let backlog = std::mem::take(&mut self.unindexed);
        if self.run.is_empty() {
            self.run = backlog;
        } else {
            self.run.extend(backlog);
        }
        // stable: within a hash, the run's pairs (older) stay before the backlog's, and
        // both are in seq order already
        radsort::sort_by_key(&mut self.run, |&(hash, _)| hash);
    }

    /// The seqs filed for `hash` (the run's, then the map's; not ordered between the two).
    fn filed(&self, hash: u32) -> impl Iterator<Item = Seq> + use<'_> {
        let start = self.run.partition_point(|&(h, _)| h < hash);
        let in_run = self.run.get(start..).unwrap_or_default();
        let in_run = in_run.iter().take_while(move |&&(h, _)| h == hash);
        let in_map = self.by_hash.get(&hash).into_iter().flatten();
        in_run.map(|&(_, seq)| seq).chain(in_map.copied())
    }

    /// Removes and returns every live event carrying an identifier in `erased`, in arrival
    /// order, and forgets those identifiers.
    pub fn take_carrying(&mut self, erased: &HashSet<Ident>) -> Result<Vec<EventFacts>, String> {
        self.catch_up();
        let mut seqs: Vec<Seq> = erased
            .iter()
            .flat_map(|id| self.filed(id.short_hash()))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        let (mut taken, mut taken_seqs, mut touched) = (Vec::new(), Vec::new(), HashSet::new());
        for seq in seqs {
            let Some(Some(bytes)) = self.slot(seq) else {
                continue; // taken by an earlier erasure, or retired
            };
            let facts = decode(bytes)?;
            if !facts.idents.iter().any(|id| erased.contains(id)) {
                continue; // another identifier with the same hash
            }
            self.vacate(seq);
            touched.extend(facts.idents.iter().map(Ident::short_hash));
            taken_seqs.push(seq);
            taken.push(facts);
        }
        // unlink the taken events from every identifier they carried, each list once
        for hash in touched {
            if let Some(list) = self.by_hash.get_mut(&hash) {
                let before = list.len();
                list.retain(|s| taken_seqs.binary_search(s).is_err());
                self.mapped -= before - list.len();
                if list.is_empty() {
                    self.by_hash.remove(&hash);
                }
            }
        }
        Ok(taken)
    }

    /// The live events carrying `ident`, in arrival order.
    pub fn carrying<'a>(&'a self, ident: &'a Ident) -> impl Iterator<Item = EventFacts> + use<'a> {
        let hash = ident.short_hash();
        let unfiled = self.unindexed.iter().filter(move |(h, _)| *h == hash);
        let mut seqs: Vec<Seq> = self.filed(hash).collect();
        seqs.extend(unfiled.map(|&(_, seq)| seq));
        seqs.sort_unstable();
        seqs.dedup(); // an event may carry two identifiers with one hash
        seqs.into_iter()
            .filter_map(|seq| decode(self.slot(seq)?.as_ref()?).ok())
            .filter(move |facts| facts.idents.contains(ident))
    }

    fn slot(&self, seq: Seq) -> Option<&Option<Box<[u8]>>> {
        slot_in(&self.events, &self.seqs, &self.firsts, seq)
    }

    fn slot_mut(&mut self, seq: Seq) -> Option<&mut Option<Box<[u8]>>> {
        let (chunk, i) = position(&self.seqs, &self.firsts, seq)?;
        self.events.get_mut(chunk)?.get_mut(i)
    }

    /// Number of live events.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no event is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// Where event `seq` is held: (chunk, index in it); `None` once its chunk is freed.
fn position(seqs: &[Vec<Seq>], firsts: &[Seq], seq: Seq) -> Option<(usize, usize)> {
    let chunk = firsts
        .partition_point(|&first| first <= seq)
        .checked_sub(1)?;
    let i = seqs.get(chunk)?.binary_search(&seq).ok()?;
    Some((chunk, i))
}

/// The slot of event `seq` (see [`position`]).
fn slot_in<'h>(
    events: &'h [Vec<Option<Box<[u8]>>>],
    seqs: &[Vec<Seq>],
    firsts: &[Seq],
    seq: Seq,
) -> Option<&'h Option<Box<[u8]>>> {
    let (chunk, i) = position(seqs, firsts, seq)?;
    events.get(chunk)?.get(i)
}

/// The encoding the history holds (varint `bincode`, which never fails on these types).
fn encode(facts: &EventFacts) -> Box<[u8]> {
    let bytes = bincode::DefaultOptions::new().serialize(facts);
    bytes.unwrap_or_default().into_boxed_slice()
}

/// Decodes what [`encode`] wrote; an error means a bug, reported with context.
fn decode(bytes: &[u8]) -> Result<EventFacts, String> {
    bincode::DefaultOptions::new()
        .deserialize(bytes)
        .map_err(|e| {
            format!(
                "history: unreadable event facts ({} bytes): {e}",
                bytes.len()
            )
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataflow::Origin;

    /// An event of identifiers `ids` (rank 0) with a signal, a sequence role, a consent
    /// record and a trait (the keepers' tests use it too).
    pub(crate) fn facts(seq: Seq, ids: &[&str]) -> EventFacts {
        EventFacts {
            seq,
            idents: ids.iter().map(|v| Ident::new(0, v)).collect(),
            wide: false,
            timestamp_ms: 1_767_225_600_000 + seq,
            arrival_ms: 1_767_225_600_500 + seq,
            signals: vec![1, 3],
            roles: vec![(0, 1)],
            consent: vec![(2, false)],
            traits: vec![("plan".into(), 1, "\"pro\"".into())],
            message_id: Some(format!("m-{seq}").into()),
            origin: Origin {
                source: 1,
                line: seq + 1,
            },
            blocked: vec![Ident::new(1, "blocked")].into_boxed_slice(),
        }
    }

    /// What goes in encoded comes out equal, by identifier and when erased.
    #[test]
    fn events_come_back_as_they_went_in() {
        let mut history = History::default();
        let events = [facts(0, &["a", "b"]), facts(1, &["b"]), facts(2, &["c"])];
        for event in events.iter().cloned() {
            history.push(event);
        }
        let carrying_b: Vec<EventFacts> = history.carrying(&Ident::new(0, "b")).collect();
        assert_eq!(carrying_b, events[..2].to_vec());
        let erased: HashSet<Ident> = [Ident::new(0, "a")].into_iter().collect();
        assert_eq!(history.take_carrying(&erased), Ok(vec![events[0].clone()]));
        assert_eq!(history.len(), 2);
        let carrying_b: Vec<EventFacts> = history.carrying(&Ident::new(0, "b")).collect();
        assert_eq!(carrying_b, vec![events[1].clone()]);
    }

    /// Two identifiers whose 32-bit hashes are equal share an index key: reading or
    /// erasing one never reaches the other's events, filed in the index or not yet.
    #[test]
    fn identifiers_with_one_hash_stay_apart() {
        let mut first_with: std::collections::HashMap<u32, String> = Default::default();
        let (x, y) = (0..1_000_000)
            .map(|i| format!("u-{i}"))
            .find_map(|v| {
                let hash = Ident::new(0, &v).short_hash();
                first_with
                    .insert(hash, v.clone())
                    .map(|earlier| (earlier, v))
            })
            .expect("a 32-bit collision among a million values");
        let (ix, iy) = (Ident::new(0, &x), Ident::new(0, &y));
        assert_eq!(ix.short_hash(), iy.short_hash());
        for filed in [false, true] {
            let mut history = History::default();
            let events = [
                facts(0, &[&x]),
                facts(1, &[&y]),
                facts(2, &[&x, "z"]),
                facts(3, &[&y]),
            ];
            for event in events.iter().cloned() {
                history.push(event);
            }
            if filed {
                history.catch_up();
            }
            let of_y: Vec<EventFacts> = history.carrying(&iy).collect();
            assert_eq!(of_y, vec![events[1].clone(), events[3].clone()]);
            let erased: HashSet<Ident> = [ix.clone()].into_iter().collect();
            let taken = history.take_carrying(&erased);
            assert_eq!(taken, Ok(vec![events[0].clone(), events[2].clone()]));
            assert_eq!(history.carrying(&ix).count(), 0);
            assert_eq!(history.carrying(&Ident::new(0, "z")).count(), 0);
            let of_y: Vec<EventFacts> = history.carrying(&iy).collect();
            assert_eq!(of_y, vec![events[1].clone(), events[3].clone()]);
            assert_eq!(history.len(), 2);
        }
        // one event carrying both: read once for each
        let mut history = History::default();
        history.push(facts(0, &[&x, &y]));
        for filed in [false, true] {
            if filed {
                history.catch_up();
            }
            assert_eq!(history.carrying(&ix).count(), 1);
            assert_eq!(history.carrying(&iy).count(), 1);
        }
    }

    /// Backlogs filed as sorted runs (large), into the map (small, or smaller than the run)
    /// and merged runs all read back in arrival order, before and after an erasure.
    #[test]
    fn runs_and_the_map_read_back_in_arrival_order() {
        let mut history = History::default();
        let mut all = Vec::new();
        let key = |i: u64| format!("k{}", i % 7);
        // 10,000 pairs (a run), 100 (the map), 6,000 (the map: shorter than the run),
        // 16,000 (merged with the run), and 10 left unfiled
        for batch in [5_000, 50, 3_000, 8_000, 5] {
            for _ in 0..batch {
                let seq = all.len() as Seq;
                let event = facts(seq, &[&key(seq), &format!("e{seq}")]);
                all.push(event.clone());
                history.push(event);
            }
            if batch > 5 {
                history.catch_up();
            }
        }
        let expect = |all: &[EventFacts], k: &str, gone: &str| -> Vec<EventFacts> {
            let (k, gone) = (Ident::new(0, k), Ident::new(0, gone));
            let live = all.iter().filter(|e| !e.idents.contains(&gone));
            live.filter(|e| e.idents.contains(&k)).cloned().collect()
        };
        for k in 0..7 {
            let k = format!("k{k}");
            let read: Vec<EventFacts> = history.carrying(&Ident::new(0, &k)).collect();
            assert_eq!(read, expect(&all, &k, "none"), "{k}");
        }
        let erased: HashSet<Ident> = [Ident::new(0, "k3")].into_iter().collect();
        let taken = history.take_carrying(&erased);
        assert_eq!(taken, Ok(expect(&all, "k3", "none")));
        for k in 0..7 {
            let k = format!("k{k}");
            let read: Vec<EventFacts> = history.carrying(&Ident::new(0, &k)).collect();
            assert_eq!(read, expect(&all, &k, "k3"), "{k} after erasing k3");
        }
        assert_eq!(history.carrying(&Ident::new(0, "e3")).count(), 0);
        assert_eq!(history.carrying(&Ident::new(0, "e4")).count(), 1);
    }
}
