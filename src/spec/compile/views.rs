//! SPEC section 8, `[[view]]`: conditions and fields, names resolved to indices.

use super::*;

impl Ctx<'_> {
    /// A view: a unique name, its conditions (purpose, `score_gte`, `has_signal`, trait
    /// predicates) and its fields, each name resolved against `spec`.
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
        let purpose = self.view_purpose(&raw, spec, &name)?;
        let score_gte_milli = match &raw.score_gte {
            None => None,
            Some(v) => Some(self.points(v, "view.score_gte")?),
        };
        let has_signal_id = match &raw.has_signal {
            None => None,
            Some(s) => Some(self.view_signal(s, spec, &name)?),
        };
        let predicates = self.view_predicates(&raw, &name)?;
        let fields = self.view_fields(&raw, spec, &name)?;
        Ok(ViewSpec {
            name,
            purpose,
            internal: raw.internal,
            score_gte_milli,
            has_signal_id,
            has_signal: raw.has_signal.map(|s| s.into_inner()),
            predicates,
            fields,
        })
    }

    /// The view's purpose (by index); a view without one must be declared `internal`.
    fn view_purpose(
        &self,
        raw: &RawView,
        spec: &Spec,
        name: &str,
    ) -> Result<Option<usize>, SpecError> {
        let Some(p) = &raw.purpose else {
            if raw.internal {
                return Ok(None);
            }
            return self.err(
                raw.name.span(),
                "view.internal",
                format!("view \"{name}\" has no purpose: declare it `internal = true` (operators only) or give it a purpose"),
            );
        };
        let lower = p.get_ref().to_lowercase();
        match spec.consent.purposes.iter().position(|(n, _)| *n == lower) {
            Some(i) => Ok(Some(i)),
            None => self.err(
                p.span(),
                "view.purpose",
                format!("view \"{name}\": unknown purpose \"{}\"", p.get_ref()),
            ),
        }
    }

    /// The scored id of `has_signal`: a signal's or a sequence's name.
    fn view_signal(
        &self,
        signal: &Spanned<String>,
        spec: &Spec,
        name: &str,
    ) -> Result<u16, SpecError> {
        match spec.intent.scored_id(signal.get_ref()) {
            Some(id) => Ok(id),
            None => self.err(
                signal.span(),
                "view.has_signal",
                format!(
                    "view \"{name}\": unknown signal or sequence \"{}\"",
                    signal.get_ref()
                ),
            ),
        }
    }

    /// The view's trait predicates: each path must be `traits.<key>`.
    fn view_predicates(&self, raw: &RawView, name: &str) -> Result<Vec<Predicate>, SpecError> {
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
        Ok(predicates)
    }

    /// The view's fields, in declaration order, each once: `score`, `signals`,
    /// `traits.<path>` or an identifier type.
    fn view_fields(&self, raw: &RawView, spec: &Spec, name: &str) -> Result<Vec<Field>, SpecError> {
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
        Ok(fields)
    }
}
