//! SPEC section 8, `[consent]`: purposes and their defaults.

use super::*;

impl Ctx<'_> {
    pub(super) fn consent(&self, raw: Option<RawConsent>) -> Result<ConsentSpec, SpecError> {
        let mut purposes: Vec<(String, bool)> = Vec::new();
        if let Some(raw) = raw.and_then(|r| r.purposes) {
            let span = raw.span();
            for (name, granted) in raw.into_inner() {
                let lower = name.to_lowercase();
                if purposes.iter().any(|(n, _)| *n == lower) {
                    return self.err(
                        span,
                        "consent.purposes",
                        format!("duplicate purpose \"{name}\" (names are case-insensitive)"),
                    );
                }
                purposes.push((lower, granted));
            }
        }
        purposes.sort();
        Ok(ConsentSpec { purposes })
    }
}
