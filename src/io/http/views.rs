//! Views changed on a running server: `PUT /v1/views/{name}` (a definition: the TOML of one
//! `[[view]]` table, or the same as JSON) and `DELETE /v1/views/{name}`, both with the write
//! key.
//!
//! A change is checked as `throughline check` checks a file (a bad one answers `400` with
//! its line and key), recorded durably in `DIR/views.ndjson` with the log position it takes
//! effect at (by the engine, just before it makes it), and made by the engine over the
//! profiles it holds: the view's rows are served as soon as the answer comes, and its
//! changes follow like every view's. The spec's new text is then written to
//! `DIR/dataflow.toml`. Changes are made one at a time; a request for a view another request
//! is changing at that moment answers `409`: the change in progress wins.
//! `POST /v1/views/{name}/preview` is a dry run: the rows a definition would have now.
//!
//! `PUT /v1/spec` takes a whole spec: made as view changes when only its views differ, else
//! handed to the server's [`Rebuilds`] (a rebuild from the log, switched to in one step);
//! views cannot change while one runs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use super::*;
use crate::engine::input::{ViewApplied, ViewChange, ViewLogger, ViewPreview};
use crate::spec::edit;
use crate::store::views::{ViewLog, ViewRecord};

/// The running spec's text and the log of its view changes.
pub struct Catalog {
    /// The spec's text now.
    pub text: String,
    /// What it compiles to.
    pub spec: Arc<Spec>,
    /// Its name in messages.
    pub file: String,
    /// The last change's version (0 before any).
    pub version: u64,
    /// Where changes are logged (by the engine, before it makes them).
    pub log: Arc<Mutex<ViewLog>>,
    /// `DIR/dataflow.toml`.
    pub dataflow: PathBuf,
}

/// The catalog, and the views being changed right now, so that a second request for one of
/// them is told that the first wins.
pub struct Views {
    catalog: Mutex<Catalog>,
    changing: Mutex<BTreeSet<String>>,
}

impl Views {
    /// The views of `catalog`.
    pub fn new(catalog: Catalog) -> Views {
        Views {
            catalog: Mutex::new(catalog),
            changing: Mutex::new(BTreeSet::new()),
        }
    }

    /// The spec's text now, views changed while running included.
    pub fn text(&self) -> Option<String> {
        self.catalog.lock().ok().map(|c| c.text.clone())
    }

    /// The spec now, views changed while running included.
    pub fn spec(&self) -> Option<Arc<Spec>> {
        self.catalog.lock().ok().map(|c| Arc::clone(&c.spec))
    }
}

/// A server that rebuilds its dataflow from the log for a whole new spec (`PUT /v1/spec`,
/// `crate::server`'s rebuilds): in the background, while the running one serves, then
/// switching over in one step.
pub trait Rebuilds: Send + Sync {
    /// Starts building `spec` (`text`) from the log; the answer's JSON, or why not (a
    /// status and a message). A spec a rebuild cannot apply exactly to the log as
    /// compaction left it is refused unless `inexact` (then it applies exactly only from
    /// where the log's folded lines end: [`edit::inexact_rules`]).
    fn start(&self, text: String, spec: Spec, inexact: bool) -> Result<Value, (u16, String)>;
    /// Whether a rebuild is running (views cannot change meanwhile).
    fn running(&self) -> bool;
    /// The rebuild running, or one that failed, as a line of `/healthz`.
    fn line(&self) -> Option<String>;
    /// The same as JSON (`/v1/stats`, for the console).
    fn progress(&self) -> Option<Value>;
}

impl Views {
    /// Records, durably, that the spec is `text` from log position `position` (engine time
    /// `time`) on, a rebuild's switch-over, and makes it the catalog's (and
    /// `DIR/dataflow.toml`'s): the version it is.
    pub fn switch_to(
        &self,
        text: &str,
        spec: Arc<Spec>,
        position: u64,
        time: u64,
    ) -> Result<u64, String> {
        let mut catalog = self
            .catalog
            .lock()
            .map_err(|_| "views unavailable".to_string())?;
        let version = catalog.version + 1;
        catalog
            .log
            .lock()
            .map_err(|_| "the view log is unavailable".to_string())?
            .append(&ViewRecord {
                version,
                position,
                time,
                name: String::new(),
                definition: None,
                spec: Some(text.to_string()),
            })?;
        if let Err(e) = crate::store::data_dir::write_atomically(&catalog.dataflow, text.as_bytes())
        {
            eprintln!(
                "throughline: cannot write {} (the new spec is recorded in views.ndjson; the file is written again at the next change or start): {e}",
                catalog.dataflow.display()
            );
        }
        catalog.text = text.to_string();
        catalog.spec = spec;
        catalog.version = version;
        Ok(version)
    }
}

/// `PUT /v1/spec`: a whole new spec. When only its views differ from the running spec's,
/// each differing view is changed as by `PUT` or `DELETE /v1/views/NAME` (one version each,
/// in order: deletions first); the answer lists them. A spec whose identifier types,
/// signals, sequences or purposes differ is built from the log in the background
/// ([`Rebuilds`]): `202`, and `/healthz` shows its progress. One whose input settings differ
/// answers `422`: admission would differ from what was acknowledged (restart with it).
pub(super) fn put_spec(ctx: &Ctx, body: &[u8], inexact: bool) -> Response<Body> {
    let Some(views) = &ctx.views else {
        return error(404, "this server does not change its spec");
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return error(400, "the spec is not UTF-8");
    };
    let new = match Spec::parse(text, "spec") {
        Ok(new) => new,
        Err(e) => return error(400, &e.to_string()),
    };
    let Some(now) = views.spec() else {
        return error(500, "views unavailable");
    };
    if ctx.rebuilds.as_ref().is_some_and(|r| r.running()) {
        return rebuilding();
    }
    let changes = match edit::view_changes(&now, text, &new) {
        Ok(changes) => changes,
        Err(sections) if sections.contains(&"[input]") => {
            return error(
                422,
                "the new spec changes [input] (the dedup window): admission would differ from what was acknowledged, so a running server does not rebuild for it; restart serve with --dataflow set to it",
            );
        }
        Err(sections) => {
            let Some(rebuilds) = &ctx.rebuilds else {
                return error(
                    422,
                    &format!(
                        "the new spec changes {}: that needs a rebuild from the log, which this server does not do; restart serve with --dataflow set to it",
                        sections.join(", ")
                    ),
                );
            };
            return match rebuilds.start(text.to_string(), new, inexact) {
                Ok(answer) => respond(202, "application/json", answer.to_string()),
                Err((status, message)) => error(status, &message),
            };
        }
    };
    let mut done = Vec::new();
    for (name, definition) in changes {
        match change_one(ctx, views, &name, definition.as_deref()) {
            Ok(answer) => done.push(answer),
            Err((status, message)) => {
                let message = format!(
                    "view {name}: {message} (changes made before it: {})",
                    Value::Array(done)
                );
                return error(status, &message);
            }
        }
    }
    respond(
        200,
        "application/json",
        json!({"changes": done}).to_string(),
    )
}

/// `PUT /v1/views/{name}` (`definition` is the body) or `DELETE /v1/views/{name}` (`None`).
pub(super) fn change(ctx: &Ctx, name: &str, definition: Option<&[u8]>) -> Response<Body> {
    let Some(views) = &ctx.views else {
        return error(404, "this server does not change views");
    };
    let body = match definition.map(std::str::from_utf8) {
        Some(Err(_)) => return error(400, "the definition is not UTF-8"),
        Some(Ok(body)) => Some(body),
        None => None,
    };
    if ctx.rebuilds.as_ref().is_some_and(|r| r.running()) {
        return rebuilding();
    }
    match change_one(ctx, views, name, body) {
        Ok(answer) => respond(200, "application/json", answer.to_string()),
        Err((status, message)) if status == 409 => {
            answer(status, &message, &[("Retry-After", "1")])
        }
        Err((status, message)) => error(status, &message),
    }
}

/// `409`: views and the spec wait for a rebuild to switch over.
fn rebuilding() -> Response<Body> {
    answer(
        409,
        "a rebuild for a new spec is running: views and the spec change once it has switched over (GET /healthz shows its progress)",
        &[("Retry-After", "5")],
    )
}

/// One view's change, unless another request is changing that view (`409`: it wins).
fn change_one(
    ctx: &Ctx,
    views: &Views,
    name: &str,
    body: Option<&str>,
) -> Result<Value, (u16, String)> {
    {
        let Ok(mut changing) = views.changing.lock() else {
            return Err((500, "views unavailable".into()));
        };
        if !changing.insert(name.to_string()) {
            return Err((
                409,
                format!(
                    "view {name} is being changed by another request, which wins (its answer carries the new version); retry to change it again"
                ),
            ));
        }
    }
    let result = apply(ctx, views, name, body);
    if let Ok(mut changing) = views.changing.lock() {
        changing.remove(name);
    }
    result
}

/// `POST /v1/views/{name}/preview`: the rows the definition `body` would give view `name`
/// now (how many, and the first by key), without defining it; checked like a `PUT`.
pub(super) fn preview(ctx: &Ctx, name: &str, body: &[u8]) -> Response<Body> {
    let Some(views) = &ctx.views else {
        return error(404, "this server does not change views");
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return error(400, "the definition is not UTF-8");
    };
    let Some((text, file)) = views
        .catalog
        .lock()
        .ok()
        .map(|c| (c.text.clone(), c.file.clone()))
    else {
        return error(500, "views unavailable");
    };
    let edited = match edit::put_view(&text, &file, name, body) {
        Ok(edited) => edited,
        Err(e) => return error(400, &e.to_string()),
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    let change = ViewChange {
        name: name.to_string(),
        spec: edited.text.clone(),
        text: Some(edited.text),
    };
    if ctx.lookups.send(Message::Preview(change, reply)).is_err() {
        return error(503, "the engine is not running");
    }
    match answer.recv() {
        Ok(Ok(ViewPreview { rows, first })) => {
            let first: Vec<Value> = first
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            respond(
                200,
                "application/json",
                json!({"view": name, "rows": rows, "first": first}).to_string(),
            )
        }
        Ok(Err(e)) => error(503, &e),
        Err(_) => error(503, "the engine is not running"),
    }
}

/// Checks, applies, logs and keeps one change: the answer's JSON.
fn apply(ctx: &Ctx, views: &Views, name: &str, body: Option<&str>) -> Result<Value, (u16, String)> {
    let Ok(mut catalog) = views.catalog.lock() else {
        return Err((500, "views unavailable".into()));
    };
    let existed = ctx.live.lock().is_ok_and(|l| l.names.contains(name));
    let edited = match body {
        Some(body) => edit::put_view(&catalog.text, &catalog.file, name, body)
            .map_err(|e| (400, e.to_string()))?,
        None if !existed => return Err((404, format!("no view named {name}"))),
        None => edit::delete_view(&catalog.text, &catalog.file, name).map_err(|e| (400, e))?,
    };
    let version = catalog.version + 1;
    let definition = body
        .map(|b| edit::view_definition(name, b).map(|(d, _)| d))
        .transpose()
        .map_err(|e| (400, e.to_string()))?;
    // the engine records the change, where it takes effect, before it makes it
    let logger = {
        let (log, name) = (Arc::clone(&catalog.log), name.to_string());
        ViewLogger(Some(Box::new(move |position, time| {
            let record = ViewRecord {
                version,
                position,
                time,
                name,
                definition,
                spec: None,
            };
            log.lock()
                .map_err(|_| "the view log is unavailable".to_string())?
                .append(&record)
        })))
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    let change = ViewChange {
        name: name.to_string(),
        text: body.map(|_| edited.text.clone()),
        spec: edited.text.clone(),
    };
    ctx.lookups
        .send(Message::View(change, logger, reply))
        .map_err(|_| (503, "the engine is not running".to_string()))?;
    let applied: ViewApplied = answer
        .recv()
        .map_err(|_| (503, "the engine is not running".to_string()))?
        .map_err(|e| (503, e))?;
    // made and recorded: the catalog follows, whatever happens to dataflow.toml
    let written =
        crate::store::data_dir::write_atomically(&catalog.dataflow, edited.text.as_bytes());
    catalog.text = edited.text;
    catalog.spec = Arc::new(edited.spec);
    catalog.version = version;
    let warning = written.err().map(|e| {
        let why = format!(
            "cannot write {} (the change is made and recorded in views.ndjson; the file is written again at the next change or start): {e}",
            catalog.dataflow.display()
        );
        eprintln!("throughline: {why}");
        why
    });
    let action = match (body.is_some(), existed) {
        (true, true) => "replaced",
        (true, false) => "created",
        (false, _) => "deleted",
    };
    Ok(json!({
        "view": name,
        "action": action,
        "version": version,
        "engine_time": applied.time,
        "position": applied.position,
        "rows": applied.rows,
        "warning": warning,
    }))
}
