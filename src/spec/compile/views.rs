//! SPEC section 8, `[[view]]`: conditions and fields, names resolved to indices.

use super::*;

impl Ctx<'_> {
    pub(super) fn view(
        &self,
        raw: RawView,
        spec: &Spec,
        names: &mut HashSet<String>,
    ) -> Result<ViewSpec, SpecError> {
        let name = raw.name.get_ref().clone();
        if !names.insert(name.clone()) {
            return self.err(
                raw.name.span(),
                "view.name",
                format!("duplicate view name \"{name}\""),
            );
        }
        if name.is_empty() {
            return self.err(raw.name.span(), "view.name", "a view needs a name".into());
        }
        let purpose = match &raw.purpose {
            None => None,
            Some(p) => {
                let lower = p.get_ref().to_lowercase();
                match spec.consent.purposes.iter().position(|(n, _)| *n == lower) {
                    Some(i) => Some(i),
                    None => {
                        return self.err(
                            p.span(),
                            "view.purpose",
                            format!("view \"{name}\": unknown purpose \"{}\"", p.get_ref()),
                        );
                    }
                }
            }
        };
        if purpose.is_none() && !raw.internal {
            return self.err(
                raw.name.span(),
                "view.internal",
                format!("view \"{name}\" has no purpose: declare it `internal = true` (operators only) or give it a purpose"),
            );
        }
        let score_gte_milli = match &raw.score_gte {
            None => None,
            Some(v) => Some(self.points(v, "view.score_gte")?),
        };
        if let Some(s) = &raw.has_signal
            && !spec.scored_name_exists(s.get_ref())
        {
            return self.err(
                s.span(),
                "view.has_signal",
                format!(
                    "view \"{name}\": unknown signal or sequence \"{}\"",
                    s.get_ref()
                ),
            );
        }
        let mut predicates = Vec::new();
        for p in &raw.predicates {
            let pred = self.predicate(p, "view.where")?;
            if pred.path.len() < 2 || pred.path[0] != "traits" {
                return self.err(
                    p.span(),
                    "view.where",
                    format!("view \"{name}\": a view condition's path must be traits.<key>"),
                );
            }
            predicates.push(pred);
        }
        let mut fields = Vec::new();
        for f in raw.fields.get_ref() {
            let field = if f == "score" {
                Field::Score
            } else if f == "signals" {
                Field::Signals
            } else if let Some(rest) = f.strip_prefix("traits.") {
                let path = self.path(rest, raw.fields.span(), "view.fields")?;
                Field::Trait(f.clone(), path)
            } else if let Some(rank) = spec.identity.identifiers.iter().position(|t| t.name == *f) {
                Field::Identifier(rank)
            } else {
                return self.err(
                    raw.fields.span(),
                    "view.fields",
                    format!("view \"{name}\": unknown field \"{f}\" (expected score, signals, traits.<key> or an identifier type)"),
                );
            };
            if fields.contains(&field) {
                return self.err(
                    raw.fields.span(),
                    "view.fields",
                    format!("view \"{name}\": duplicate field \"{f}\""),
                );
            }
            fields.push(field);
        }
        Ok(ViewSpec {
            name,
            purpose,
            internal: raw.internal,
            score_gte_milli,
            has_signal_id: raw
                .has_signal
                .as_ref()
                .and_then(|s| spec.intent.scored_id(s.get_ref())),
            has_signal: raw.has_signal.map(|s| s.into_inner()),
            predicates,
            fields,
        })
    }
}
