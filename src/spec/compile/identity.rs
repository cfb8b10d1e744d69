//! SPEC section 8, `[identity]`: identifier types, their priority and anchors, `max_links`.

use super::*;

impl Ctx<'_> {
    pub(super) fn identity(&self, raw: Spanned<RawIdentity>) -> Result<IdentitySpec, SpecError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let max_links = match raw.max_links {
            None => 50,
            Some(v) if *v.get_ref() >= 0 => *v.get_ref() as usize,
            Some(v) => {
                return self.err(
                    v.span(),
                    "identity.max_links",
                    "must be a non-negative integer".into(),
                );
            }
        };
        let blocklist = raw
            .blocklist
            .unwrap_or_else(|| {
                [
                    "null",
                    "undefined",
                    "none",
                    "nil",
                    "0",
                    "-1",
                    "anonymous",
                    "unknown",
                    "test@test.com",
                    "test@example.com",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .into_iter()
            .map(|v| v.to_lowercase())
            .collect();
        if raw.identifier.is_empty() {
            return self.err(
                span,
                "identity.identifier",
                "at least one identifier type is required".into(),
            );
        }
        let mut seen = HashSet::new();
        let mut identifiers = Vec::new();
        for id in raw.identifier {
            let name = id.name.get_ref().clone();
            let key = "identity.identifier.name";
            if !seen.insert(name.clone()) {
                return self.err(
                    id.name.span(),
                    key,
                    format!("duplicate identifier type \"{name}\""),
                );
            }
            if name.is_empty()
                || name == "score"
                || name == "signals"
                || name.starts_with("traits.")
                || name.contains(':')
            {
                return self.err(
                    id.name.span(),
                    key,
                    format!("\"{name}\" cannot name an identifier type (empty, reserved, or contains ':')"),
                );
            }
            if id.paths.get_ref().is_empty() {
                return self.err(
                    id.paths.span(),
                    "identity.identifier.paths",
                    "at least one path is required".into(),
                );
            }
            let mut paths = Vec::new();
            for p in id.paths.get_ref() {
                paths.push(self.path(p, id.paths.span(), "identity.identifier.paths")?);
            }
            identifiers.push(IdentifierType {
                name,
                paths,
                anchor: id.anchor,
                lowercase: id.lowercase,
            });
        }
        if identifiers.len() > u8::MAX as usize {
            return self.err(
                span,
                "identity.identifier",
                "at most 255 identifier types".into(),
            );
        }
        Ok(IdentitySpec {
            max_links,
            blocklist,
            identifiers,
        })
    }
}
