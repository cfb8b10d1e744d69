//! Publishing (SPEC section 7): completing times in the dataflow and writing the changes of
//! every completed clock value, consolidated and sorted, to every sink.

use super::*;
use crate::dataflow::views::ViewRow;

/// The longest worker 0 sleeps between steps while a round completes; it wakes sooner
/// when another worker sends it anything (see [`Driver::complete`]).
pub(super) const PARK: Duration = Duration::from_millis(1);

impl Driver<'_> {
    /// Completes everything inserted so far at clock `now` (a new step within it).
    pub(super) fn barrier(&mut self, now: u64) -> Result<(), EngineError> {
        if self.step + 1 >= (1 << STEP_BITS) {
            return Err(EngineError::Input(format!(
                "more than {} forget requests or pauses at one clock value ({now})",
                (1u32 << STEP_BITS) - 1
            )));
        }
        self.step += 1;
        self.feed.advance_to(time(now, self.step));
        self.complete(time(now, self.step));
        Ok(())
    }

    /// Steps the dataflow until every time before `until` is complete.
    ///
    /// Worker 0 sleeps between steps while the other workers have the round's work, and
    /// wakes when they send it something: a worker 0 polling for it would hold one of the
    /// machine's cores away from the workers (and the writers, and the parsing thread) it
    /// waits for. Every worker keeps a share of the events ([`crate::dataflow::keeper`]),
    /// so a replay's worker 0 waits for theirs as a live round's does.
    pub(super) fn complete(&mut self, until: Time) {
        self.feed.flush();
        while self.outputs.probe.less_than(&until) {
            self.worker.step_or_park(Some(PARK));
        }
    }

    /// After a batch: completes and publishes every clock value before the current one.
    ///
    /// Pipelined: this round's events go to the keepers at once, but the round waited for
    /// is the one before, so that worker 0 admits the next round's lines while the other
    /// workers still work on this one (admission is the one sequential stage). A replay's
    /// changes are published a round later; live input publishes every round
    /// ([`Driver::publish_current`]).
    pub(super) fn settle(&mut self) -> Result<(), EngineError> {
        if self.clock().is_none() {
            return Ok(());
        }
        self.feed.flush();
        let previous = self.in_flight.replace(self.feed.time());
        if let Some(previous) = previous {
            self.complete(previous);
            if clock_of(previous) > 0 {
                self.emit(clock_of(previous) - 1)?;
            }
        }
        Ok(())
    }

    /// Completes and publishes the current clock value as it stands (end of input, or a
    /// pause on live input).
    pub(super) fn publish_current(&mut self) -> Result<(), EngineError> {
        let Some(clock) = self.clock() else {
            return Ok(());
        };
        if self.step + 1 >= (1 << STEP_BITS) {
            return Ok(()); // published when the clock moves on
        }
        self.barrier(clock)?;
        self.emit(clock)?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the captured changes at clock values `<= upto_ms`, consolidated per time and
    /// sorted by (time, view, key) (SPEC section 7). Their times must be complete.
    pub(super) fn emit(&mut self, upto_ms: u64) -> Result<(), EngineError> {
        let mut ready = Vec::new();
        {
            let mut captured = self.outputs.changes.borrow_mut();
            let spec = self.spec;
            let mut later = Vec::new();
            for ((view, key, row), t, diff) in captured.drain(..) {
                if clock_of(t) > upto_ms {
                    later.push(((view, key, row), t, diff));
                    continue;
                }
                let name = spec
                    .views
                    .get(view as usize)
                    .map_or("?", |v| v.name.as_str());
                ready.push(Change {
                    time: clock_of(t),
                    view: name.to_string(),
                    key: key.key(&spec.identity),
                    diff,
                    row,
                });
            }
            *captured = later;
        }
        let changes = consolidated(ready);
        for change in &changes {
            if change.diff.abs() != 1 {
                return Err(EngineError::Internal(format!(
                    "internal error: change with diff {} for {} in view {}",
                    change.diff, change.key, change.view
                )));
            }
            if let Some(w) = &mut self.sinks.changes {
                writeln!(w, "{}", change.json())?;
            }
        }
        if let Some(w) = &mut self.sinks.changes {
            w.flush()?;
        }
        // Bookkeeping first: whoever sees a change (a subscriber, a snapshot
        // reader) finds it already counted in `/metrics`.
        self.summary.tally.changes += changes.len() as u64;
        self.mirror_counts();
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
            self.summary.latency.record(micros);
            if forget {
                self.summary.forget_latency.record(micros);
            }
            if let Some(c) = &self.sinks.counters {
                c.latency.observe(u64::from(micros));
            }
        }
        // every publication, empty or not, tells the sinks how far the input is published
        let position = self.summary.tally.lines;
        for publisher in &mut self.sinks.publishers {
            publisher.publish(&changes, position)?;
        }
        if let Some(live) = &self.sinks.live
            && !changes.is_empty()
            && let Ok(mut views) = live.lock()
        {
            views.apply(&changes);
        }
        match (&mut self.snapshot, self.options.collect_changes) {
            (Some(snapshot), false) => changes.into_iter().for_each(|c| snapshot.apply_owned(c)),
            (Some(snapshot), true) => {
                changes.iter().for_each(|c| snapshot.apply(c));
                self.summary.changes.extend(changes);
            }
            (None, true) => self.summary.changes.extend(changes),
            (None, false) => {}
        }
        Ok(())
    }

    /// The final snapshot from the rows every worker of a cluster gives on the row
    /// stream as the dataflow completes ([`RowsOnly::streamed`]).
    fn gather_streamed(&mut self) -> Result<Snapshot, EngineError> {
        let started = Instant::now();
        while self.worker.step_or_park(Some(PARK)) {
            if started.elapsed() > HANDOVER_LIMIT {
                return Err(EngineError::Internal(
                    "internal error: the workers did not hand over their rows".into(),
                ));
            }
        }
        let rows = std::mem::take(&mut *self.outputs.changes.borrow_mut());
        let rows = rows.into_iter().map(|(row, _, diff)| (row, diff));
        Ok(snapshot_of(self.spec, rows))
    }

    /// The final snapshot from every worker's rows ([`RowsOnly`]): closes the inputs and
    /// steps the dataflow until every worker of the process has handed its rows over.
    pub(super) fn gather_rows(&mut self, rows: &RowsOnly) -> Result<Snapshot, EngineError> {
        self.feed.close();
        if rows.streamed {
            return self.gather_streamed();
        }
        let workers = self.options.workers.max(1);
        let started = Instant::now();
        loop {
            let handed = rows.done.lock().map(|done| done.len()).unwrap_or(0);
            if handed >= workers {
                break;
            }
            if started.elapsed() > HANDOVER_LIMIT {
                return Err(EngineError::Internal(format!(
                    "internal error: {handed} of {workers} workers handed over their rows"
                )));
            }
            self.worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let done = std::mem::take(
            &mut *rows
                .done
                .lock()
                .map_err(|_| EngineError::Internal("internal error: a worker panicked".into()))?,
        );
        let rows = done.into_iter().flatten();
        Ok(snapshot_of(
            self.spec,
            rows.map(|((v, p, r), d)| ((v, p.0, r), d)),
        ))
    }
}

/// The snapshot of final view rows: `((view, profile, row), multiplicity)`.
fn snapshot_of(spec: &Spec, rows: impl Iterator<Item = (ViewRow, isize)>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for ((view, profile, row), diff) in rows {
        let name = spec
            .views
            .get(view as usize)
            .map_or("?", |v| v.name.as_str());
        snapshot.apply_owned(Change {
            time: 0,
            view: name.to_string(),
            key: profile.key(&spec.identity),
            diff,
            row,
        });
    }
    snapshot
}
