//! Views changed while running (`PUT` and `DELETE /v1/views/NAME`): worker 0's side.
//!
//! A change takes effect at the current clock value, after every line sent before it: what
//! is pending is published first, then the change goes to every worker as a
//! [`ViewCommand`] at a step of its own ([`crate::dataflow::profiles`] renders the view
//! again over every profile it holds), and the view's new rows are published at once. The
//! view is then maintained like the spec's own: its rows at every later time are those a
//! server started with it would have.

use super::Driver;
use super::input::{ViewApplied, ViewChange};
use crate::dataflow::views::ViewCommand;

impl Driver<'_> {
    /// Applies `change` (its text was checked by the caller): when it took effect, and the
    /// view's rows then.
    pub(super) fn change_view(&mut self, change: ViewChange) -> Result<ViewApplied, String> {
        let now = self.clock().unwrap_or(0);
        // what came before is published on its own
        self.publish_current().map_err(|e| e.to_string())?;
        if !self.rounds.has_step() {
            return Err("too many changes at one clock value; retry shortly".into());
        }
        let index = self.publisher.view_index(&change.name)?;
        let exists = change.text.is_some();
        if exists {
            // subscribers and reads see the view from its first rows on
            self.publisher.view_changed(&change.name, true);
        }
        self.rounds.feed.view(ViewCommand {
            index,
            name: change.name.clone(),
            text: change.text,
        });
        self.rounds.barrier(now).map_err(|e| e.to_string())?;
        self.publisher
            .emit(now, &mut self.summary.tally)
            .map_err(|e| e.to_string())?;
        self.dirty = false;
        let rows = self.publisher.view_changed(&change.name, exists);
        self.mirror();
        Ok(ViewApplied {
            time: now,
            position: self.summary.tally.lines,
            rows,
        })
    }
}
