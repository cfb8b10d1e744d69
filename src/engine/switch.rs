//! A rebuild's switch-over (`PUT /v1/spec` on a running server): worker 0's side.
//!
//! A rebuild runs a second engine over the retained log with the new spec while the running
//! one serves. Once it has caught up, the server stops forwarding input for a moment, tells
//! the running engine to [`Driver::release`] its outputs (it publishes what is pending and
//! stops), and gives them to the new engine, which [`Driver::adopt`]s them: at one engine
//! time it publishes the changes from the old rows to its own, so that a subscriber
//! consolidating its stream still has the current view, and from then on it publishes
//! everything like the engine it replaced.
//!
//! Those changes are worked out before the switch-over, while both engines run
//! ([`Preparing`]): the two engines' rows are compared a shard at a time
//! ([`super::output::Snapshot::changes_in`]), each engine's live views locked only for one
//! shard, and both keep a journal of the rows they change from the start. Passes then compare
//! the journaled rows again, each what changed during the one before, until few are left
//! ([`Prepared::settle`], as a live migration's pre-copy converges). At the switch-over only
//! the rows journaled since the last pass are compared again ([`Prepared`]), and the new
//! engine's rows take the place of the old ones instead of the changes being applied to them
//! ([`LiveViews::replace`]): the views stop for the journal's rows and the publication of the
//! changes, not for a comparison of every row. This is the same difference as comparing
//! every row at the switch-over ([`super::output::Snapshot::changes_to`]): a row no journal
//! holds has not changed in either engine since its shard was compared.
//!
//! What is left to free is freed off the serving CPUs: the rows replaced and the changes
//! once published, on a thread of their own ([`super::drop_in_background`]), and the old
//! engine's dataflow by its own threads, lowered as background work when it lets go of its
//! outputs ([`super::background::Crew`]). Measured at 1M events of state, the new engine's
//! take-over went from 31 ms to 4 ms: 12–29 ms of it had been the pass over every change
//! that finished the comparison, and 19 ms freeing the changes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use super::output::{Change, DeadLetters, LiveViews, SHARDS};
use super::publish::Outlets;
use super::{Counters, Driver, EngineError, ErasureSink};

/// An engine's outputs, as it hands them over at a switch-over ([`super::input::Message::Release`]).
pub struct Handover {
    outlets: Outlets,
    dead_letters: DeadLetters,
    erasures: Option<ErasureSink>,
    /// The engine time of the last publication.
    time: u64,
    /// Changes published so far (so `/metrics` keeps counting on from there).
    changes: u64,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("time", &self.time)
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

/// What a switch-over did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// The engine time the changes from the old rows to the new were published at.
    pub time: u64,
    /// The log lines taken before it.
    pub position: u64,
    /// How many changes that was.
    pub changes: usize,
}

impl Driver<'_> {
    /// Publishes what is pending and hands every output over (this engine then stops, its
    /// threads lowered as background work while they free its state).
    pub(super) fn release(&mut self) -> Result<Handover, EngineError> {
        self.publish_current()?;
        self.mirror();
        let (outlets, time) = self.publisher.release();
        self.counters = None;
        // all that is left is freeing this engine's state: not on the serving CPUs
        if let Some(crew) = &self.crew {
            crew.lower();
        }
        Ok(Handover {
            outlets,
            dead_letters: std::mem::replace(&mut self.dead_letters, DeadLetters::new(None)),
            erasures: self.erasures.take(),
            time,
            changes: self.summary.tally.changes,
        })
    }

    /// Takes over the outputs `handed` by the engine this one replaces, once every line
    /// sent before is published here: publishes the changes from the rows the old engine
    /// published (the handed live views) to this engine's own, at one engine time (the
    /// later of the two engines' last times), then ends the subscriptions of views the new
    /// spec does not have.
    pub(super) fn adopt(
        &mut self,
        handed: Handover,
        prepared: Prepared,
    ) -> Result<Switched, String> {
        // the serving engine from now on: its threads get their normal priority back
        if let Some(background) = self.options.background.take() {
            background.restore();
        }
        self.publish_current().map_err(|e| e.to_string())?;
        let Handover {
            outlets,
            dead_letters,
            erasures,
            time,
            changes,
        } = handed;
        let shared = outlets
            .live
            .clone()
            .ok_or("the old engine had no live views")?;
        let counters: Option<Arc<Counters>> = outlets.counters.clone();
        let own = self
            .publisher
            .adopt(outlets)
            .ok_or("this engine kept no live views to switch to")?;
        if !Arc::ptr_eq(&own, &prepared.new) || !Arc::ptr_eq(&shared, &prepared.old) {
            return Err("the switch-over was prepared for other views".into());
        }
        let now = time.max(self.clock().unwrap_or(0));
        let diff = prepared.finish(now)?;
        let (rows, names) = {
            let mut own = lock(&own)?;
            (std::mem::take(&mut own.snapshot), own.names.clone())
        };
        let count = diff.len();
        self.summary.tally.changes = changes;
        self.publisher
            .deliver(diff, now, &mut self.summary.tally, Some(rows))
            .map_err(|e| e.to_string())?;
        {
            let mut views = lock(&shared)?;
            let gone: Vec<String> = views.names.difference(&names).cloned().collect();
            for name in gone {
                views.end_view(&name);
            }
            views.names = names;
        }
        self.dead_letters = dead_letters;
        self.erasures = erasures;
        self.counters = counters;
        self.spec_now = None;
        self.mirror();
        Ok(Switched {
            time: now,
            position: self.summary.tally.lines,
            changes: count,
        })
    }
}

/// A switch-over's changes being worked out while both engines run (see the module docs):
/// the serving engine's live views (`old`) are compared with the new engine's (`new`) a
/// shard at a time ([`Preparing::step`]).
pub struct Preparing {
    prepared: Prepared,
    /// The (view, shard)s not compared yet.
    left: Vec<(String, usize)>,
}

impl Preparing {
    /// Starts keeping both engines' journals of changed rows, and lists the shards to
    /// compare.
    pub fn start(
        old: Arc<Mutex<LiveViews>>,
        new: Arc<Mutex<LiveViews>>,
    ) -> Result<Preparing, String> {
        let mut names = std::collections::BTreeSet::new();
        for views in [&old, &new] {
            let mut views = lock(views)?;
            views.journal(true);
            names.extend(views.snapshot.view_names().cloned());
        }
        let left = names
            .into_iter()
            .flat_map(|view| (0..SHARDS).rev().map(move |shard| (view.clone(), shard)))
            .collect();
        Ok(Preparing {
            prepared: Prepared {
                old,
                new,
                changes: Vec::new(),
            },
            left,
        })
    }

    /// Compares one more shard (both engines' views locked, the new engine's first: see
    /// `both`): whether any is left.
    pub fn step(&mut self) -> Result<bool, String> {
        let Some((view, shard)) = self.left.pop() else {
            return Ok(false);
        };
        let mut found = Vec::new();
        let (old, new) = both(&self.prepared.old, &self.prepared.new)?;
        // timed at the switch-over ([`Prepared::finish`])
        old.snapshot
            .changes_in(&new.snapshot, &view, shard, 0, &mut found);
        drop((old, new));
        // not while the views wait: growing the changes (hundreds of thousands) takes
        // milliseconds of fresh pages
        self.prepared.changes.append(&mut found);
        Ok(!self.left.is_empty())
    }

    /// Every shard compared: the changes, to be finished at the switch-over.
    pub fn done(mut self) -> Result<Prepared, String> {
        while self.step()? {}
        // each (view, key, row) was compared once; the order of the changes at one time
        // (all are at 0 until the switch-over): by view, key, then retractions first
        self.prepared.changes.sort_unstable();
        Ok(self.prepared)
    }
}

/// A switch-over's changes, compared while both engines ran ([`Preparing`]), to be finished
/// once both have stopped publishing (the new engine does, when it adopts the old one's
/// outputs). Dropped without finishing, it stops both journals.
pub struct Prepared {
    old: Arc<Mutex<LiveViews>>,
    new: Arc<Mutex<LiveViews>>,
    /// Each (view, key, row) whose multiplicity differs, with the new multiplicity minus the
    /// old as compared, once every shard is in the changes' order at one time (by view, key,
    /// then retractions first).
    changes: Vec<Change>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("changes", &self.changes.len())
            .finish_non_exhaustive()
    }
}

/// How many journaled rows [`Prepared::settle`] compares under one lock of both engines'
/// views.
const SETTLE_CHUNK: usize = 256;

impl Prepared {
    /// Compares again, while both engines run, every row either journal holds, and starts
    /// both journals afresh: how many rows that was. Each pass compares what changed during
    /// the one before (as a live migration's pre-copy does), so the rows left for the
    /// switch-over, when the views wait, are what changed since the last pass. The views
    /// are locked `SETTLE_CHUNK` (256) rows at a time.
    pub fn settle(&mut self) -> Result<usize, String> {
        let mut rows: Vec<_> = self.journals(true)?.into_iter().collect();
        let count = rows.len();
        let mut again = Vec::with_capacity(count);
        while !rows.is_empty() {
            let chunk = rows.split_off(rows.len().saturating_sub(SETTLE_CHUNK));
            let (old, new) = both(&self.old, &self.new)?;
            let found = compared_again(&old, &new, chunk);
            drop((old, new));
            again.extend(found);
        }
        if self.take(again) {
            self.changes.retain(|c| c.diff != 0);
        }
        Ok(count)
    }

    /// The changes, at `time`, from the old engine's rows to the new one's, consolidated
    /// and sorted as [`super::output::consolidated`] sorts: the comparison, with every row
    /// a journal holds compared again (the engines no longer publish).
    fn finish(mut self, time: u64) -> Result<Vec<Change>, String> {
        let journal = self.journals(false)?;
        let again = {
            let (old, new) = both(&self.old, &self.new)?;
            compared_again(&old, &new, journal)
        };
        let emptied = self.take(again);
        let mut changes = std::mem::take(&mut self.changes);
        if emptied {
            changes.retain(|c| c.diff != 0);
        }
        for c in &mut changes {
            c.time = time;
        }
        Ok(changes)
    }

    /// Both engines' journals of changed rows (kept on afresh if `keep`).
    fn journals(&self, keep: bool) -> Result<HashSet<(String, String, String)>, String> {
        let mut journal = lock(&self.old)?.journal(keep);
        journal.extend(lock(&self.new)?.journal(keep));
        Ok(journal)
    }

    /// Takes rows compared again (`again`, a change each, its diff the new multiplicity
    /// minus the old, `0` for none) in place of what the comparison had for them, keeping
    /// the changes in their order (every time is 0 until the switch-over: by view, key, then
    /// retractions first); whether a change was left with a diff of `0`. Touches only the
    /// changes of the keys in `again`: the switch-over's own pass must not walk all of them
    /// (each comparison of strings is a cache miss or more).
    fn take(&mut self, again: Vec<Change>) -> bool {
        let changes = &mut self.changes;
        let mut more = Vec::new();
        let mut emptied = false;
        for change in again {
            let from = changes.partition_point(|c| (&c.view, &c.key) < (&change.view, &change.key));
            let len = changes
                .get(from..)
                .unwrap_or_default()
                .iter()
                .take_while(|c| (&c.view, &c.key) == (&change.view, &change.key))
                .count();
            let Some(group) = changes.get_mut(from..from + len) else {
                continue;
            };
            match group.iter_mut().find(|c| c.row == change.row) {
                Some(c) => {
                    emptied |= change.diff == 0;
                    c.diff = change.diff;
                    group.sort_unstable();
                }
                None if change.diff != 0 => more.push(change),
                None => {}
            }
        }
        if !more.is_empty() {
            more.sort_unstable();
            let at: Vec<usize> = more
                .iter()
                .map(|m| changes.partition_point(|c| c < m))
                .collect();
            let mut merged = Vec::with_capacity(changes.len() + more.len());
            let mut rest = std::mem::take(changes).into_iter();
            let mut taken = 0;
            for (at, change) in at.into_iter().zip(more) {
                merged.extend(rest.by_ref().take(at - taken));
                merged.push(change);
                taken = at;
            }
            merged.extend(rest);
            *changes = merged;
        }
        emptied
    }
}

/// Each of `rows` (view, key, row) as a change (at time 0) of the new engine's multiplicity
/// minus the old one's.
fn compared_again(
    old: &LiveViews,
    new: &LiveViews,
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> Vec<Change> {
    rows.into_iter()
        .map(|(view, key, row)| {
            let pair = (key, row);
            let diff = new.snapshot.count(&view, &pair) - old.snapshot.count(&view, &pair);
            let (key, row) = pair;
            Change {
                time: 0,
                view,
                key,
                diff,
                row,
            }
        })
        .collect()
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for views in [&self.old, &self.new] {
            if let Ok(mut views) = views.lock() {
                views.journal(false);
            }
        }
    }
}

/// The serving engine's views (`old`) and the new engine's (`new`) locked together: the
/// new engine's first. The new engine may hold its lock for milliseconds (a catch-up's
/// publication, at the least CPU priority); waiting for it while holding the serving
/// engine's lock would stall the serving engine's publication as long. The serving engine
/// holds its own only to apply one live round's changes.
fn both<'a>(
    old: &'a Mutex<LiveViews>,
    new: &'a Mutex<LiveViews>,
) -> Result<(MutexGuard<'a, LiveViews>, MutexGuard<'a, LiveViews>), String> {
    let new = lock(new)?;
    let old = lock(old)?;
    Ok((old, new))
}

fn lock(views: &Mutex<LiveViews>) -> Result<MutexGuard<'_, LiveViews>, String> {
    views
        .lock()
        .map_err(|_| "the live views are unavailable".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::output::Snapshot;

    /// Changes of a few rows of two views under many keys, so that they fall in many shards.
    fn changes(updates: &[(usize, usize, usize, bool)]) -> Vec<Change> {
        updates
            .iter()
            .map(|&(view, key, row, insert)| Change {
                time: 1,
                view: format!("v{view}"),
                key: format!("user_id:u{key}"),
                diff: if insert { 1 } else { -1 },
                row: format!("{{\"r\":{row}}}"),
            })
            .collect()
    }

    fn live(rows: &[Change]) -> Arc<Mutex<LiveViews>> {
        let mut views = LiveViews::default();
        views.apply(rows);
        Arc::new(Mutex::new(views))
    }

    proptest::proptest! {
        /// The law of a prepared switch-over: comparing the two engines' rows a shard at a
        /// time while both go on changing, then comparing the journaled rows again in passes
        /// while they still change, and once more at the end, gives exactly the changes of
        /// comparing every row at the end, in the same order; and applied to the old rows
        /// they give the new ones.
        #[test]
        fn a_prepared_switch_over_equals_comparing_every_row_at_the_end(
            old in proptest::collection::vec((0usize..2, 0usize..400, 0usize..3, proptest::bool::ANY), 0..300),
            new in proptest::collection::vec((0usize..3, 0usize..400, 0usize..3, proptest::bool::ANY), 0..300),
            during in proptest::collection::vec(
                (proptest::bool::ANY, 0usize..SHARDS * 3, (0usize..3, 0usize..400, 0usize..3, proptest::bool::ANY)),
                0..60),
            after in proptest::collection::vec(
                (proptest::bool::ANY, proptest::bool::ANY, (0usize..3, 0usize..400, 0usize..3, proptest::bool::ANY)),
                0..40),
        ) {
            let (old, new) = (live(&changes(&old)), live(&changes(&new)));
            let mut preparing = Preparing::start(Arc::clone(&old), Arc::clone(&new)).unwrap();
            // changes in either engine between the shards' comparisons
            let mut steps = 0;
            for (in_old, at, update) in during {
                while steps < at && preparing.step().unwrap() {
                    steps += 1;
                }
                let target = if in_old { &old } else { &new };
                target.lock().unwrap().apply(&changes(&[update]));
            }
            let mut prepared = preparing.done().unwrap();
            // changes between the passes that compare the journaled rows again
            for (in_old, settle, update) in after {
                if settle {
                    prepared.settle().unwrap();
                }
                let target = if in_old { &old } else { &new };
                target.lock().unwrap().apply(&changes(&[update]));
            }
            let (from, to) = (
                old.lock().unwrap().snapshot.clone(),
                new.lock().unwrap().snapshot.clone(),
            );
            let expected = from.changes_to(&to, 7);
            let got = prepared.finish(7).unwrap();
            proptest::prop_assert_eq!(&got, &expected);
            let mut applied: Snapshot = from;
            got.iter().for_each(|c| applied.apply(c));
            proptest::prop_assert_eq!(applied.lines(), to.lines());
        }
    }
}
