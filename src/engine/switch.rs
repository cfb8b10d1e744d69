//! A rebuild's switch-over (`PUT /v1/spec` on a running server): worker 0's side.
//!
//! A rebuild runs a second engine over the retained log with the new spec while the running
//! one serves. Once it has caught up, the server stops forwarding input for a moment, tells
//! the running engine to [`Driver::release`] its outputs (it publishes what is pending and
//! stops), and gives them to the new engine, which [`Driver::adopt`]s them: at one engine
//! time it publishes the changes from the old rows to its own, so that a subscriber
//! consolidating its stream still has the current view, and from then on it publishes
//! everything like the engine it replaced.

use std::sync::{Arc, Mutex};

use super::output::{DeadLetters, LiveViews};
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
    /// Publishes what is pending and hands every output over (this engine then stops).
    pub(super) fn release(&mut self) -> Result<Handover, EngineError> {
        self.publish_current()?;
        self.mirror();
        let (outlets, time) = self.publisher.release();
        self.counters = None;
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
    pub(super) fn adopt(&mut self, handed: Handover) -> Result<Switched, String> {
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
        let now = time.max(self.clock().unwrap_or(0));
        let (diff, names) = {
            let (own, old) = (lock(&own)?, lock(&shared)?);
            (
                old.snapshot.changes_to(&own.snapshot, now),
                own.names.clone(),
            )
        };
        let count = diff.len();
        self.summary.tally.changes = changes;
        self.publisher
            .deliver(diff, now, &mut self.summary.tally)
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

fn lock(views: &Mutex<LiveViews>) -> Result<std::sync::MutexGuard<'_, LiveViews>, String> {
    views
        .lock()
        .map_err(|_| "the live views are unavailable".to_string())
}
