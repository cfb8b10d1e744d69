//! An explanation as JSON (the stable form), a report for a person, or a Graphviz graph of
//! the profile's identity.

use std::fmt::Write;

use serde_json::Value;

use super::{EventRef, Explanation, Link, Outcome};
use crate::event::timestamp::rfc3339;

/// Output formats of `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Stable JSON (documented in `src/docs/explain.md`).
    Json,
    /// A readable report.
    Text,
    /// The identity graph for Graphviz.
    Dot,
}

impl Format {
    /// Parses `json`, `text` or `dot`.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "text" => Some(Format::Text),
            "dot" => Some(Format::Dot),
            _ => None,
        }
    }

    /// The HTTP content type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Text => "text/plain; charset=utf-8",
            Format::Dot => "text/vnd.graphviz",
        }
    }
}

/// The outcome in `format`, ending with a newline.
pub fn render(outcome: &Outcome, format: Format) -> String {
    match (format, outcome) {
        (Format::Json, _) => {
            let mut text = serde_json::to_string_pretty(outcome).unwrap_or_default();
            text.push('\n');
            text
        }
        (Format::Text, Outcome::Found(e)) => text(e),
        (Format::Dot, Outcome::Found(e)) => dot(e),
        (Format::Text, Outcome::Suppressed { identifier }) => {
            format!("{identifier} is suppressed: it was erased, and nothing else is kept\n")
        }
        (Format::Text, Outcome::NotFound { identifier }) => {
            format!("{identifier}: no live event carries it\n")
        }
        (Format::Dot, Outcome::Suppressed { identifier } | Outcome::NotFound { identifier }) => {
            format!(
                "graph identity {{\n  {} [label={}, shape=plaintext];\n}}\n",
                quote(identifier),
                quote(&format!("{identifier}: {}", status(outcome)))
            )
        }
    }
}

fn status(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Found(_) => "found",
        Outcome::Suppressed { .. } => "suppressed",
        Outcome::NotFound { .. } => "not found",
    }
}

/// An event as a person reads it: its messageId (or source and line) and its time.
fn cited(e: &EventRef) -> String {
    let name = match &e.message_id {
        Some(id) => format!("event {id}"),
        None => format!("{} line {}", e.source, e.line),
    };
    let retired = if e.retired { ", retired" } else { "" };
    format!("{name} at {}{retired}", rfc3339(e.timestamp, 0))
}

fn cited_all(events: &[EventRef], total: usize) -> String {
    let mut out: Vec<String> = events.iter().map(cited).collect();
    if total > events.len() {
        out.push(format!("{} more", total - events.len()));
    }
    out.join(", ")
}

fn num(v: &Value) -> String {
    v.to_string()
}

fn text(e: &Explanation) -> String {
    let mut s = String::new();
    let kind = if e.identity.anchored {
        "anchored"
    } else {
        "anonymous"
    };
    let _ = writeln!(
        s,
        "{} belongs to profile {} ({kind})",
        e.identifier, e.profile
    );
    let _ = writeln!(s, "state at {} ({})", rfc3339(e.at, 0), e.at);
    let _ = writeln!(
        s,
        "\nIdentity: {} identifiers, {} events",
        e.identity.identifiers.len(),
        e.identity.events
    );
    for m in &e.identity.identifiers {
        let l = &m.label;
        let _ = writeln!(
            s,
            "  {}  label ({}, {}, {})",
            m.identifier, l.class, l.distance, l.root
        );
        if !m.path.is_empty() {
            let steps: Vec<String> = m
                .path
                .iter()
                .map(|link| {
                    format!(
                        "{} ({})",
                        link.to,
                        cited_all(&link.events, link.events_total)
                    )
                })
                .collect();
            let _ = writeln!(s, "    path: {}", steps.join(" -> "));
        }
        if !m.contenders.is_empty() {
            let _ = writeln!(
                s,
                "    as near ({} edges) but lost on (type, value): {}",
                l.distance,
                m.contenders.join(", ")
            );
        }
    }
    if !e.identity.links_out.is_empty() {
        let _ = writeln!(s, "  links out of the profile:");
        for link in &e.identity.links_out {
            let to = match (&link.dropped, &link.profile) {
                (Some(_), _) => "dropped: hub".to_string(),
                (None, Some(p)) => format!("in profile {p}"),
                (None, None) => "in another profile".to_string(),
            };
            let _ = writeln!(
                s,
                "    {} - {} ({to}) by {}",
                link.from,
                link.to,
                cited_all(&link.events, link.events_total)
            );
        }
    }
    for hub in &e.identity.hubs {
        let _ = writeln!(s, "  hub {}: {}", hub.identifier, hub.reason);
    }
    for b in &e.identity.blocklisted {
        let _ = writeln!(
            s,
            "  blocklisted {} (ignored) in {}",
            b.identifier,
            cited_all(&b.events, b.events_total)
        );
    }
    let _ = writeln!(s, "\nScore: {}", num(&e.score.value));
    for c in &e.score.contributions {
        let what = match &c.first_event {
            Some(first) => format!("{} (sequence, after {})", c.name, cited(first)),
            None => c.name.clone(),
        };
        let next = match &c.next_change {
            Some(n) => format!("; {} from {}", num(&n.weight), rfc3339(n.at, 0)),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "  {:>10}  {what}: {}, {} points halved {} times{next}",
            num(&c.weight),
            cited(&c.event),
            num(&c.points),
            c.halvings
        );
    }
    if e.score.expired > 0 {
        let _ = writeln!(s, "  ({} occurrences weigh nothing now)", e.score.expired);
    }
    let _ = writeln!(s, "\nConsent:");
    for c in &e.consent {
        let state = if c.granted { "granted" } else { "denied" };
        let why = match &c.decided_by {
            None => "default".to_string(),
            Some(ev) if c.tie => format!("{}, which tied with a grant (denied wins)", cited(ev)),
            Some(ev) => cited(ev),
        };
        let _ = writeln!(s, "  {:<16} {state:<8} by {why}", c.purpose);
    }
    let _ = writeln!(s, "\nTraits:");
    for t in &e.traits {
        let _ = writeln!(
            s,
            "  {} = {}  from {} of {}",
            t.key,
            t.value,
            t.from,
            cited(&t.event)
        );
    }
    let _ = writeln!(s, "\nViews:");
    for v in &e.views {
        let _ = writeln!(s, "  {:<24} {}", v.view, if v.is_in { "in" } else { "out" });
        for c in &v.conditions {
            let mark = if c.holds { "holds" } else { "fails" };
            let _ = writeln!(s, "    {mark}: {} (value {})", c.condition, c.value);
        }
        if let Some(row) = &v.row {
            let _ = writeln!(s, "    row {row}");
        }
    }
    s
}

fn quote(s: &str) -> String {
    Value::from(s).to_string()
}

/// Graphviz colours for identifier types, by position in the spec (cycled).
const COLOURS: [&str; 8] = [
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
];

fn colour(identifier: &str, types: &mut Vec<String>) -> &'static str {
    let kind = identifier.split(':').next().unwrap_or_default().to_string();
    let i = types.iter().position(|t| *t == kind).unwrap_or_else(|| {
        types.push(kind);
        types.len() - 1
    });
    COLOURS[i % COLOURS.len()]
}

fn dot(e: &Explanation) -> String {
    let mut s = String::new();
    let mut types = Vec::new();
    let _ = writeln!(s, "graph identity {{");
    let _ = writeln!(
        s,
        "  label={};\n  node [style=filled, fontname=\"Helvetica\"];",
        quote(&format!("profile {} at {}", e.profile, rfc3339(e.at, 0)))
    );
    let hubs: Vec<&str> = e
        .identity
        .hubs
        .iter()
        .map(|h| h.identifier.as_str())
        .collect();
    for m in &e.identity.identifiers {
        let anchor = m.label.class == 0 && m.label.distance == 0;
        let mut attrs = format!("fillcolor=\"{}\"", colour(&m.identifier, &mut types));
        if anchor {
            attrs.push_str(", shape=doubleoctagon, penwidth=2");
        }
        if hubs.contains(&m.identifier.as_str()) {
            attrs.push_str(", shape=box");
        }
        let _ = writeln!(s, "  {} [{attrs}];", quote(&m.identifier));
    }
    let mut outside: Vec<&str> = e.identity.links_out.iter().map(|l| l.to.as_str()).collect();
    outside.sort_unstable();
    outside.dedup();
    for id in outside {
        let shape = if hubs.contains(&id) { "box" } else { "ellipse" };
        let _ = writeln!(
            s,
            "  {} [fillcolor=\"{}\", shape={shape}, style=\"filled,dashed\", fontcolor=\"#555555\"];",
            quote(id),
            colour(id, &mut types)
        );
    }
    // edges on a path to the anchor (or least identifier) are bold
    let on_path = |l: &Link| {
        e.identity.identifiers.iter().any(|m| {
            m.path.first().is_some_and(|p| {
                (p.from == l.from && p.to == l.to) || (p.from == l.to && p.to == l.from)
            })
        })
    };
    for l in &e.identity.edges {
        let width = if on_path(l) { 2 } else { 1 };
        let _ = writeln!(
            s,
            "  {} -- {} [penwidth={width}, label=\"{}\"];",
            quote(&l.from),
            quote(&l.to),
            l.events_total
        );
    }
    for l in &e.identity.links_out {
        let style = if l.dropped.is_some() {
            "dashed"
        } else {
            "solid"
        };
        let _ = writeln!(
            s,
            "  {} -- {} [style={style}, color=\"#999999\", label=\"{}\"];",
            quote(&l.from),
            quote(&l.to),
            l.events_total
        );
    }
    let _ = writeln!(s, "}}");
    s
}
