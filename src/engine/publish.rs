//! Publishing (SPEC section 7): writing the changes of every completed clock value,
//! consolidated and sorted, to every sink, and the final snapshot.
//!
//! [`Publisher`] is the last stage of worker 0's loop: its input is the view row changes
//! the dataflow captured (every worker's, exchanged to worker 0) and the read instants of
//! the accepted events; its state is the sinks, the snapshot and the latency figures.
//! [`super::rounds::Rounds`] says which times are complete; only those are published.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::output::{Change, LiveViews, Publish, Snapshot, consolidated};
use super::rounds::Rounds;
use super::stats::{Counters, Latency, Summary, Tally};
use super::{EngineError, HANDOVER_LIMIT};
use crate::dataflow::views::ViewRow;
use crate::dataflow::{Captured, RowsOnly, clock_of};
use crate::spec::Spec;

/// The publishing stage: the sinks of the change stream and what it keeps of the changes.
pub(super) struct Publisher<'w> {
    spec: &'w Spec,
    /// View row changes captured from the dataflow and not yet published.
    captured: Captured<ViewRow>,
    /// Net change in the number of profiles (the dataflow adds to it).
    profiles: Rc<RefCell<i64>>,
    /// The change stream (NDJSON), if written.
    changes: Option<Box<dyn Write + Send>>,
    /// A live snapshot kept up to date as times are published.
    live: Option<Arc<Mutex<LiveViews>>>,
    /// Counters readable while running.
    counters: Option<Arc<Counters>>,
    /// Further outputs of each published group of changes (Kafka topics).
    publishers: Vec<Box<dyn Publish>>,
    snapshot: Option<Snapshot>,
    /// Keep every change (replays and tests).
    collect: bool,
    collected: Vec<Change>,
    /// (clock ms, read instant, is a forget) of accepted events not yet published.
    pending: VecDeque<(u64, Instant, bool)>,
    latency: Latency,
    forget_latency: Latency,
    /// The position and engine time of the last publication.
    published: (u64, u64),
    /// Every view's name by index: the spec's, then those added while running.
    names: Vec<String>,
    /// The index views are previewed under (never published), once one was.
    preview: Option<u16>,
}

/// The sinks a [`Publisher`] writes.
pub(super) struct Outlets {
    pub(super) changes: Option<Box<dyn Write + Send>>,
    pub(super) live: Option<Arc<Mutex<LiveViews>>>,
    pub(super) counters: Option<Arc<Counters>>,
    pub(super) publishers: Vec<Box<dyn Publish>>,
}

impl<'w> Publisher<'w> {
    /// Publishes the changes in `captured` to `outlets`; keeps the final snapshot if
    /// `snapshot`, every change if `collect`.
    pub(super) fn new(
        spec: &'w Spec,
        captured: Captured<ViewRow>,
        profiles: Rc<RefCell<i64>>,
        outlets: Outlets,
        snapshot: bool,
        collect: bool,
    ) -> Publisher<'w> {
        Publisher {
            spec,
            captured,
            profiles,
            changes: outlets.changes,
            live: outlets.live,
            counters: outlets.counters,
            publishers: outlets.publishers,
            snapshot: snapshot.then(Snapshot::default),
            collect,
            collected: Vec::new(),
            pending: VecDeque::new(),
            latency: Latency::default(),
            forget_latency: Latency::default(),
            published: (0, 0),
            names: spec.views.iter().map(|v| v.name.clone()).collect(),
            preview: None,
        }
    }

    /// The index views are previewed under: its rows are never published.
    pub(super) fn preview_index(&mut self) -> Result<u16, String> {
        if let Some(index) = self.preview {
            return Ok(index);
        }
        // a name no view can have
        let index = self.view_index("\u{1}preview")?;
        self.preview = Some(index);
        Ok(index)
    }

    /// Takes the captured row changes of view `index` out: `(key, row, diff)`.
    pub(super) fn take_view_rows(&mut self, index: u16) -> Vec<(String, String, isize)> {
        let mut taken = Vec::new();
        self.captured
            .borrow_mut()
            .retain(|((view, key, row), _, diff)| {
                if *view != index {
                    return true;
                }
                taken.push((key.clone(), row.clone(), *diff));
                false
            });
        taken
    }

    /// The index of view `name` (a new one for a name never seen in this run).
    pub(super) fn view_index(&mut self, name: &str) -> Result<u16, String> {
        if let Some(at) = self.names.iter().position(|n| n == name) {
            return Ok(at as u16);
        }
        if self.names.len() >= usize::from(u16::MAX) {
            return Err("too many views made in one run: restart the server".into());
        }
        self.names.push(name.to_string());
        Ok((self.names.len() - 1) as u16)
    }

    /// Tells the live views that view `name` exists or, once its `-1`s are published, is
    /// gone (its subscriptions end); its rows now.
    pub(super) fn view_changed(&mut self, name: &str, exists: bool) -> usize {
        let Some(live) = &self.live else { return 0 };
        let Ok(mut views) = live.lock() else { return 0 };
        if exists {
            views.names.insert(name.to_string());
        } else {
            views.names.remove(name);
            views.end_view(name);
        }
        views.snapshot.count_of(name)
    }

    /// Tells the sinks that the input is published up to the lines taken (`tally.lines`)
    /// when the lines since the last publication changed nothing (dead letters,
    /// duplicates): an empty publication at the last engine time, so a destination's
    /// position reaches the end of live input.
    pub(super) fn catch_up(&mut self, tally: &Tally) -> Result<(), EngineError> {
        let (position, time) = self.published;
        if tally.lines <= position {
            return Ok(());
        }
        self.published.0 = tally.lines;
        for publisher in &mut self.publishers {
            publisher.publish(&[], tally.lines, time)?;
        }
        Ok(())
    }

    /// Notes an accepted event read at `read_at`, at clock `now`: its latency is measured
    /// when that clock value is published.
    pub(super) fn accepted(&mut self, now: u64, read_at: Instant, forget: bool) {
        self.pending.push_back((now, read_at, forget));
    }

    /// Writes the captured changes at clock values `<= upto_ms`, consolidated per time and
    /// sorted by (time, view, key) (SPEC section 7), and counts them in `tally`. Their times
    /// must be complete.
    pub(super) fn emit(&mut self, upto_ms: u64, tally: &mut Tally) -> Result<(), EngineError> {
        let changes = consolidated(self.take_ready(upto_ms));
        for change in &changes {
            if change.diff.abs() != 1 {
                return Err(EngineError::Internal(format!(
                    "internal error: change with diff {} for {} in view {}",
                    change.diff, change.key, change.view
                )));
            }
            if let Some(w) = &mut self.changes {
                writeln!(w, "{}", change.json())?;
            }
        }
        if let Some(w) = &mut self.changes {
            w.flush()?;
        }
        self.deliver(changes, upto_ms, tally, None)
    }

    /// Publishes `changes` (consolidated, sorted, at clock values `<= upto_ms`, already
    /// written to the change stream) to the live views, the further outputs and the
    /// snapshot, and counts them in `tally`. `rows`, when given, are the live views' rows
    /// after the changes, put in their place instead of applying the changes (a rebuild's
    /// switch-over, whose new rows are at hand).
    pub(super) fn deliver(
        &mut self,
        changes: Vec<Change>,
        upto_ms: u64,
        tally: &mut Tally,
        rows: Option<Snapshot>,
    ) -> Result<(), EngineError> {
        let switching = rows.is_some();
        // Bookkeeping first: whoever sees a change (a subscriber, a snapshot
        // reader) finds it already counted in `/metrics`.
        tally.changes += changes.len() as u64;
        if let Some(c) = &self.counters {
            c.mirror_counts(tally);
        }
        self.measure(upto_ms);
        // every publication, empty or not, tells the sinks how far the input is published
        let position = tally.lines;
        self.published = (position, self.published.1.max(upto_ms));
        for publisher in &mut self.publishers {
            publisher.publish(&changes, position, self.published.1)?;
        }
        // shared as they are with the live views' subscribers
        let changes = Arc::new(changes);
        let mut replaced = None;
        if let Some(live) = &self.live
            && let Ok(mut views) = live.lock()
        {
            match rows {
                Some(rows) => replaced = Some(views.replace(rows, Arc::clone(&changes))),
                None if !changes.is_empty() => views.apply_shared(Arc::clone(&changes)),
                None => {}
            }
            views.time = views.time.max(upto_ms);
        }
        if self.snapshot.is_none() && !self.collect {
            if switching {
                // a switch-over's rows replaced and hundreds of thousands of changes: freed
                // off this thread, not while the views or the input wait
                super::drop_in_background((replaced, changes));
            }
            return Ok(());
        }
        if let Some(replaced) = replaced {
            super::drop_in_background(replaced);
        }
        // kept: a copy only if a subscriber still holds them
        let changes = Arc::try_unwrap(changes).unwrap_or_else(|shared| shared.to_vec());
        match (&mut self.snapshot, self.collect) {
            (Some(snapshot), false) => changes.into_iter().for_each(|c| snapshot.apply_owned(c)),
            (Some(snapshot), true) => {
                changes.iter().for_each(|c| snapshot.apply(c));
                self.collected.extend(changes);
            }
            (None, _) => self.collected.extend(changes),
        }
        Ok(())
    }

    /// Takes the outputs out (a rebuild's switch-over hands them to the engine that
    /// replaces this one); this publisher then publishes nowhere. With the engine time of
    /// the last publication.
    pub(super) fn release(&mut self) -> (Outlets, u64) {
        let outlets = Outlets {
            changes: self.changes.take(),
            live: self.live.take(),
            counters: self.counters.take(),
            publishers: std::mem::take(&mut self.publishers),
        };
        (outlets, self.published.1)
    }

    /// Publishes to `outlets` from now on (a rebuild's switch-over); the live views it
    /// published to before, if any.
    pub(super) fn adopt(&mut self, outlets: Outlets) -> Option<Arc<Mutex<LiveViews>>> {
        self.changes = outlets.changes;
        self.counters = outlets.counters;
        self.publishers = outlets.publishers;
        std::mem::replace(&mut self.live, outlets.live)
    }

    /// Takes the captured changes at clock values `<= upto_ms`, named.
    fn take_ready(&mut self, upto_ms: u64) -> Vec<Change> {
        let mut ready = Vec::new();
        let mut captured = self.captured.borrow_mut();
        let mut later = Vec::new();
        for ((view, key, row), t, diff) in captured.drain(..) {
            if Some(view) == self.preview {
                continue; // a preview's rows are never published
            }
            if clock_of(t) > upto_ms {
                later.push(((view, key, row), t, diff));
                continue;
            }
            ready.push(Change {
                time: clock_of(t),
                view: self
                    .names
                    .get(view as usize)
                    .map_or("?", String::as_str)
                    .to_string(),
                key,
                diff,
                row,
            });
        }
        *captured = later;
        ready
    }

    /// Records the read-to-publish latency of the accepted events at clock values
    /// `<= upto_ms`, now published.
    fn measure(&mut self, upto_ms: u64) {
        let now = Instant::now();
        while let Some(&(ms, read_at, forget)) = self.pending.front() {
            if ms > upto_ms {
                break;
            }
            self.pending.pop_front();
            let micros = now
                .duration_since(read_at)
                .as_micros()
                .min(u32::MAX as u128) as u32;
            self.latency.record(micros);
            if forget {
                self.forget_latency.record(micros);
            }
            if let Some(c) = &self.counters {
                c.latency.observe(u64::from(micros));
            }
        }
    }

    /// Ends the run: finishes every further output and puts what this stage kept in
    /// `summary` (the final snapshot from `rows` when only the rows were kept).
    pub(super) fn finish(
        &mut self,
        rounds: &mut Rounds<'_>,
        rows: Option<&RowsOnly>,
        workers: usize,
        summary: &mut Summary,
    ) -> Result<(), EngineError> {
        for publisher in &mut self.publishers {
            let wrote = publisher.finish()?;
            summary.outputs.push(wrote);
        }
        summary.profiles = *self.profiles.borrow();
        summary.latency = std::mem::take(&mut self.latency);
        summary.forget_latency = std::mem::take(&mut self.forget_latency);
        summary.changes = std::mem::take(&mut self.collected);
        summary.snapshot = match rows {
            Some(rows) => Some(self.gather_rows(rounds, rows, workers)?),
            None => self.snapshot.take(),
        };
        Ok(())
    }

    /// The final snapshot from every worker's rows ([`RowsOnly`]): closes the inputs and
    /// steps the dataflow until every worker of the process has handed its rows over (or,
    /// in a cluster, has given them on the row stream, [`RowsOnly::streamed`]).
    fn gather_rows(
        &mut self,
        rounds: &mut Rounds<'_>,
        rows: &RowsOnly,
        workers: usize,
    ) -> Result<Snapshot, EngineError> {
        rounds.close();
        if rows.streamed {
            if !rounds.run_out(HANDOVER_LIMIT) {
                return Err(EngineError::Internal(
                    "internal error: the workers did not hand over their rows".into(),
                ));
            }
            let rows = std::mem::take(&mut *self.captured.borrow_mut());
            let rows = rows.into_iter().map(|(row, _, diff)| (row, diff));
            return Ok(snapshot_of(self.spec, rows));
        }
        let handed = || rows.done.lock().map(|done| done.len()).unwrap_or(0);
        if !rounds.step_until(HANDOVER_LIMIT, || handed() >= workers) {
            return Err(EngineError::Internal(format!(
                "internal error: {} of {workers} workers handed over their rows",
                handed()
            )));
        }
        let done = std::mem::take(
            &mut *rows
                .done
                .lock()
                .map_err(|_| EngineError::Internal("internal error: a worker panicked".into()))?,
        );
        let rows = done.into_iter().flatten();
        Ok(snapshot_of(self.spec, rows))
    }
}

/// The name of view `view` of `spec`.
fn view_name(spec: &Spec, view: u16) -> &str {
    spec.views
        .get(view as usize)
        .map_or("?", |v| v.name.as_str())
}

/// The snapshot of final view rows: `((view, profile, row), multiplicity)`.
fn snapshot_of(spec: &Spec, rows: impl Iterator<Item = (ViewRow, isize)>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for ((view, key, row), diff) in rows {
        snapshot.apply_owned(Change {
            time: 0,
            view: view_name(spec, view).to_string(),
            key,
            diff,
            row,
        });
    }
    snapshot
}
