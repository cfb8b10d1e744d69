//! Views changed while running (`PUT` and `DELETE /v1/views/NAME`): worker 0's side.
//!
//! A change takes effect at the current clock value, after every line sent before it: what
//! is pending is published first, then the change goes to every worker as a
//! [`ViewCommand`] at a step of its own ([`crate::dataflow::profiles`] renders the view
//! again over every profile it holds), and the view's new rows are published at once. The
//! view is then maintained like the spec's own: its rows at every later time are those a
//! server started with it would have.

use super::Driver;
use super::input::{PREVIEW_ROWS, ViewApplied, ViewChange, ViewLogger, ViewPreview};
use crate::dataflow::views::ViewCommand;

impl Driver<'_> {
    /// Applies `change` (its text was checked by the caller), recorded first by `logger`:
    /// when it took effect, and the view's rows then.
    pub(super) fn change_view(
        &mut self,
        change: ViewChange,
        logger: ViewLogger,
    ) -> Result<ViewApplied, String> {
        let now = self.clock().unwrap_or(0);
        // what came before is published on its own
        self.publish_current().map_err(|e| e.to_string())?;
        if !self.rounds.has_step() {
            return Err("too many changes at one clock value; retry shortly".into());
        }
        let index = self.publisher.view_index(&change.name)?;
        if let Some(log) = logger.0 {
            log(self.summary.tally.lines, now)?;
        }
        let exists = change.text.is_some();
        if exists {
            // subscribers and reads see the view from its first rows on
            self.publisher.view_changed(&change.name, true);
        }
        self.rounds.feed.view(ViewCommand {
            index,
            name: change.name.clone(),
            text: change.text.clone(),
        });
        self.rounds.barrier(now).map_err(|e| e.to_string())?;
        self.publisher
            .emit(now, &mut self.summary.tally)
            .map_err(|e| e.to_string())?;
        self.dirty = false;
        let rows = self.publisher.view_changed(&change.name, exists);
        // lookups and explanations name the views of the spec as it is now
        match crate::spec::Spec::parse(&change.spec, &self.spec.source) {
            Ok(spec) => self.spec_now = Some(std::sync::Arc::new(spec)),
            Err(e) => eprintln!("throughline: internal error: the changed spec: {e}"),
        }
        self.mirror();
        Ok(ViewApplied {
            time: now,
            position: self.summary.tally.lines,
            rows,
        })
    }

    /// The rows view `change` would have now, without defining it: it is defined under the
    /// preview's index (whose rows are never published) at one step and removed at the next.
    pub(super) fn preview_view(&mut self, change: ViewChange) -> Result<ViewPreview, String> {
        let now = self.clock().unwrap_or(0);
        if change.text.is_none() {
            return Err("internal error: a preview without a definition".into());
        }
        let index = self.publisher.preview_index()?;
        if !self.rounds.has_step() {
            return Err("too many changes at one clock value; retry shortly".into());
        }
        self.rounds.feed.view(ViewCommand {
            index,
            name: change.name.clone(),
            text: change.text,
        });
        self.rounds.barrier(now).map_err(|e| e.to_string())?;
        let mut rows: Vec<(String, String)> = self
            .publisher
            .take_view_rows(index)
            .into_iter()
            .filter(|(_, _, diff)| *diff > 0)
            .map(|(key, row, _)| (key, row))
            .collect();
        // gone again at the next step (or, with no step left, at the next preview)
        self.rounds.feed.view(ViewCommand {
            index,
            name: change.name,
            text: None,
        });
        if self.rounds.has_step() {
            self.rounds.barrier(now).map_err(|e| e.to_string())?;
            self.publisher.take_view_rows(index);
        }
        rows.sort();
        let first = rows
            .iter()
            .take(PREVIEW_ROWS)
            .map(|(key, row)| {
                format!(
                    "{{\"key\":{},\"row\":{row}}}",
                    crate::dataflow::views::json_string(key)
                )
            })
            .collect();
        Ok(ViewPreview {
            rows: rows.len(),
            first,
        })
    }
}
