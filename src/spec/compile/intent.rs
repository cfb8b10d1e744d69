//! SPEC section 8, `[intent]`: half-life, maximum age, signals and sequences.

use super::*;

impl Ctx<'_> {
    pub(super) fn intent(&self, raw: Option<RawIntent>) -> Result<IntentSpec, SpecError> {
        let raw = raw.unwrap_or(RawIntent {
            half_life: None,
            max_age: None,
            max_future: None,
            signal: Vec::new(),
            sequence: Vec::new(),
        });
        let half_life_span = raw.half_life.as_ref().map(|s| s.span()).unwrap_or(0..0);
        let half_life_ms = self.duration(raw.half_life, "intent.half_life", 7 * DAY)?;
        if half_life_ms == 0 {
            return self.err(
                half_life_span,
                "intent.half_life",
                "must be positive".into(),
            );
        }
        let max_age_ms = self.duration(raw.max_age, "intent.max_age", 28 * DAY)?;
        let max_future_ms = self.duration(raw.max_future, "intent.max_future", DAY)?;
        let mut names = HashSet::new();
        let mut signals = Vec::new();
        for s in raw.signal {
            let name = s.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return self.err(
                    s.name.span(),
                    "intent.signal.name",
                    format!("duplicate signal or sequence name \"{name}\""),
                );
            }
            let mut predicates = Vec::new();
            for p in &s.predicates {
                predicates.push(self.predicate(p, "intent.signal.where")?);
            }
            signals.push(SignalSpec {
                name,
                points_milli: self.points(&s.points, "intent.signal.points")?,
                event_type: s.event_type,
                event: s.event,
                predicates,
            });
        }
        let mut sequences = Vec::new();
        for q in raw.sequence {
            let name = q.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return self.err(
                    q.name.span(),
                    "intent.sequence.name",
                    format!("duplicate signal or sequence name \"{name}\""),
                );
            }
            let find = |n: &Spanned<String>, key: &str| -> Result<usize, SpecError> {
                match signals
                    .iter()
                    .position(|s: &SignalSpec| &s.name == n.get_ref())
                {
                    Some(i) => Ok(i),
                    None => self.err(n.span(), key, format!("unknown signal \"{}\"", n.get_ref())),
                }
            };
            let first = find(&q.first, "intent.sequence.first")?;
            let then = find(&q.then, "intent.sequence.then")?;
            sequences.push(SequenceSpec {
                name,
                first,
                then,
                within_ms: self.duration(Some(q.within), "intent.sequence.within", 0)?,
                points_milli: self.points(&q.points, "intent.sequence.points")?,
            });
        }
        Ok(IntentSpec {
            half_life_ms,
            max_age_ms,
            max_future_ms,
            signals,
            sequences,
        })
    }
}
