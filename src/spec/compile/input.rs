//! SPEC section 8, `[input]`: how long `messageId`s are remembered (SPEC section 1).

use super::*;

/// The default `dedup_window`: 7 days, as collectors keep a bounded window of ids.
const DEFAULT_DEDUP_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

impl Ctx<'_> {
    pub(super) fn input(&self, raw: Option<RawInput>) -> Result<InputSpec, SpecError> {
        let window = raw.and_then(|r| r.dedup_window);
        let dedup_window_ms = match window {
            Some(w) if w.get_ref() == "unlimited" => None,
            other => Some(self.duration(other, "input.dedup_window", DEFAULT_DEDUP_WINDOW_MS)?),
        };
        Ok(InputSpec { dedup_window_ms })
    }
}
