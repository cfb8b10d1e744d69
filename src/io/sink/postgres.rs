//! A PostgreSQL destination: `--sink 'postgres://USER[:PASSWORD]@HOST[:PORT]/DB?view=V&table=T'`
//! keeps one table per view equal to the view, exactly once.
//!
//! # Tables
//!
//! A view's table (named `table=` when the sink takes one view, else the view's name) has the
//! profile key as primary key (`key text`), then the view's fields in the spec's order (the
//! score as `double precision`; identifiers, signals and traits as `jsonb`, since they are
//! lists or any JSON), then `engine_time bigint`, the engine time of the row. The sink
//! creates a table that is absent; one whose columns differ is an error naming the first
//! column that differs (the sink then does not deliver, and `/healthz` says why).
//!
//! In a server the tables follow the views defined while it runs (`PUT /v1/views/NAME`,
//! `PUT /v1/spec`): a view's table is made when it first publishes, made again (dropped,
//! then created with the new columns) when its fields were redefined, and left, emptied by
//! its `-1`s, when it is deleted (`PostgresDestination::follow_views`).
//!
//! # Exactly once
//!
//! Each published group is applied in one transaction: a `DELETE` for every row that
//! leaves, an upsert for every row that comes, and the sink's position in
//! `throughline_sink_positions` (`sink`, `position`: the group's position, `engine_time`:
//! the engine time the group completes, the `X-Throughline-Engine-Time` of
//! `GET /v1/views/NAME` once the sink has caught up). A group is a whole publication of the
//! engine, so a table is always exactly the view as one publication left it (what
//! `GET /v1/views/NAME` answered then), never half of one; a publication with nothing for the sink's views
//! still moves the position when it is the last one waiting. (One transaction per engine time would make every engine time a
//! commit that waits for the WAL's fsync: a state load or a live second has thousands of
//! them, and the sink fell seconds behind 1,000 events/s; a group is a round of the
//! engine.) After a crash or a lost connection the sink reads its position back
//! from the database, and skips what the tables already hold: the groups before that
//! position, and in the group at it the times up to the one applied. A group at the same
//! position and engine time as the one offered just before it (a view change, a rebuild's
//! switch-over: published at the last input's position and clock) is applied whole while
//! nothing later is applied: applying it again leaves the tables as they were. The sink layer saves
//! every group's position before handing it over ([`super::Destination::sends_again`]), so
//! the replay after a crash regenerates exactly those groups, and each change is applied
//! once (as Kafka Connect's JDBC sink and Materialize's sinks keep their offsets with the
//! data).
//!
//! A database that is down or a connection that breaks is retried with backoff by the sink
//! layer (`/healthz` says `degraded: …` meanwhile); the tables catch up once it is back.
//!
//! # TLS
//!
//! `sslmode=prefer` (the default) uses TLS when the server offers it, `require` insists on
//! it, `disable` never does. The server's certificate is always verified (libpq's
//! `verify-full`): it must be trusted by the system's roots or by `ca=FILE` (PEM), and name
//! the host ([`crate::io::tls`]).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Destination, Group, Progress, SpecNow};
use crate::engine::output::Change;
use crate::spec::{Field, Spec, ViewSpec};

/// The table of the sinks' positions.
const POSITIONS: &str = "throughline_sink_positions";

/// A parsed `postgres://` address.
#[derive(Debug, Clone)]
pub struct PostgresUrl {
    /// The connection settings (the address without the sink's own settings).
    config: tokio_postgres::Config,
    /// The views delivered (`view=A,B`); all when empty.
    pub views: Vec<String>,
    /// The table of the one view delivered (`table=`).
    pub table: Option<String>,
    /// Certificates trusted besides the system's (`ca=`, a PEM file).
    pub ca: Option<std::path::PathBuf>,
    name: String,
}

impl PostgresUrl {
    /// Whether `text` is meant as a PostgreSQL address.
    pub fn is_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// An output option (`--sink`) as a PostgreSQL address, when it is one.
    pub fn in_path(path: Option<&std::path::Path>) -> Option<&str> {
        path.and_then(|p| p.to_str())
            .filter(|p| PostgresUrl::is_postgres(p))
    }

    /// Parses `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?view=V&table=T&ca=F&SETTING=VALUE…]`
    /// (other settings are the client's, e.g. `connect_timeout` or `sslmode`).
    pub fn parse(text: &str) -> Result<PostgresUrl, String> {
        let bad = |why: String| {
            format!("{text}: {why} (expected postgres://USER@HOST[:PORT]/DB?view=V&table=T)")
        };
        let (address, query) = text.split_once('?').unwrap_or((text, ""));
        let mut views = Vec::new();
        let mut table = None;
        let mut ca = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("view", value) => views.extend(value.split(',').map(str::to_string)),
                ("table", value) => table = Some(value.to_string()),
                ("ca", value) => ca = Some(std::path::PathBuf::from(value)),
                _ => kept.push(pair),
            }
        }
        if table.is_some() && views.len() != 1 {
            return Err(bad("table= names the table of one view=".into()));
        }
        let client = match kept.is_empty() {
            true => address.to_string(),
            false => format!("{address}?{}", kept.join("&")),
        };
        let config = tokio_postgres::Config::from_str(&client).map_err(|e| bad(e.to_string()))?;
        // the name keeps no password
        let user = config.get_user().unwrap_or("");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or(user);
        let mut name = format!("postgres://{user}@{}:{port}/{db}", hosts.join(","));
        if !views.is_empty() {
            name = format!("{name}?view={}", views.join(","));
        }
        if let Some(table) = &table {
            name = format!("{name}&table={table}");
        }
        if ca.is_some() && config.get_ssl_mode() == SslMode::Disable {
            return Err(bad(
                "ca= is for TLS, and sslmode=disable turns it off".into()
            ));
        }
        Ok(PostgresUrl {
            config,
            views,
            table,
            ca,
            name,
        })
    }

    /// The destination's name: the address without its password.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Whether the sink delivers view `view` (all without `view=`).
    fn takes(&self, view: &str) -> bool {
        self.views.is_empty() || self.views.iter().any(|v| v == view)
    }
}

/// How a field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Number,
    Json,
}

impl Column {
    fn sql_type(self) -> &'static str {
        match self {
            Column::Number => "double precision",
            Column::Json => "jsonb",
        }
    }
}

/// A view's table.
#[derive(Debug, Clone)]
struct Table {
    view: String,
    name: String,
    fields: Vec<(String, Column)>,
}

impl Table {
    /// The columns it must have: (name, `information_schema` data type).
    fn columns(&self) -> Vec<(String, &'static str)> {
        let mut columns = vec![("key".to_string(), "text")];
        columns.extend(self.fields.iter().map(|(f, c)| (f.clone(), c.sql_type())));
        columns.push(("engine_time".to_string(), "bigint"));
        columns
    }

    fn create(&self) -> String {
        let columns: Vec<String> = self
            .columns()
            .iter()
            .map(|(c, t)| match c.as_str() {
                "key" => format!("{} {t} PRIMARY KEY", quoted(c)),
                _ => format!("{} {t}", quoted(c)),
            })
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            quoted(&self.name),
            columns.join(", ")
        )
    }

    fn upsert(&self) -> String {
        let names: Vec<String> = self.columns().iter().map(|(c, _)| quoted(c)).collect();
        let mut values = vec!["$1".to_string()];
        for (i, (_, column)) in self.fields.iter().enumerate() {
            values.push(format!("${}::text::{}", i + 2, column.sql_type()));
        }
        values.push(format!("${}", self.fields.len() + 2));
        let updates: Vec<String> = names
            .iter()
            .skip(1)
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (\"key\") DO UPDATE SET {}",
            quoted(&self.name),
            names.join(", "),
            values.join(", "),
            updates.join(", ")
        )
    }

    fn delete(&self) -> String {
        format!("DELETE FROM {} WHERE \"key\" = $1", quoted(&self.name))
    }
}

/// A client connected with `tls`, its connection's task spawned.
async fn connect<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, String>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect: {}", with_causes(&e)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// An error and what caused it (the client's errors keep the cause of a failed TLS
/// handshake, say an untrusted certificate, out of their own message).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = e.source();
    }
    text
}

/// An SQL identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Makes `table` where it is absent (first dropping the one there if `replace`), checks its
/// columns, and prepares its statements: (upsert, delete).
async fn prepare_table(
    client: &Client,
    table: &Table,
    replace: bool,
) -> Result<(Statement, Statement), String> {
    if replace {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", quoted(&table.name)))
            .await
            .map_err(|e| format!("cannot drop table {} to make it again: {e}", table.name))?;
    }
    client
        .batch_execute(&table.create())
        .await
        .map_err(|e| format!("cannot create table {}: {e}", table.name))?;
    let have = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table.name],
        )
        .await
        .map_err(|e| format!("cannot read table {}'s columns: {e}", table.name))?;
    let have: Vec<(String, String)> = have.iter().map(|r| (r.get(0), r.get(1))).collect();
    check_columns(table, &have)?;
    let upsert = client.prepare(&table.upsert()).await;
    let delete = client.prepare(&table.delete()).await;
    upsert
        .and_then(|u| delete.map(|d| (u, d)))
        .map_err(|e| format!("cannot prepare table {}'s statements: {e}", table.name))
}

/// The table of `view` of `spec` for the sink of `url`.
fn table_of(url: &PostgresUrl, spec: &Spec, view: &ViewSpec) -> Result<Table, String> {
    let mut fields = Vec::new();
    for field in &view.fields {
        let name = field.name(spec).to_string();
        if name == "key" || name == "engine_time" {
            return Err(format!(
                "{}: view {}'s field {name} would take a column the sink keeps for itself",
                url.name(),
                view.name
            ));
        }
        let column = match field {
            Field::Score => Column::Number,
            _ => Column::Json,
        };
        fields.push((name, column));
    }
    Ok(Table {
        view: view.name.clone(),
        name: url.table.clone().unwrap_or_else(|| view.name.clone()),
        fields,
    })
}

/// A connection and its prepared statements, per table: (upsert, delete).
struct Connection {
    client: Client,
    statements: BTreeMap<String, (Statement, Statement)>,
    position: Statement,
}

/// The PostgreSQL destination, driven by its sink's thread.
pub struct PostgresDestination {
    url: PostgresUrl,
    tables: Vec<Table>,
    /// The running spec, in a server: the views defined while running.
    spec_now: Option<SpecNow>,
    runtime: tokio::runtime::Runtime,
    connection: Option<Connection>,
    /// What the tables hold, as the positions table says: (group position, engine time).
    applied: Option<(u64, u64)>,
    /// The (position, engine time) of the last group offered since the start.
    last_seen: Option<(u64, u64)>,
    /// The last error that cannot be cured by retrying (a table that does not match).
    said: Option<String>,
    confirmed: u64,
    delivered: u64,
}

impl PostgresDestination {
    /// The destination of `url` for the views of `spec`, or of `spec_now` in a server (the
    /// views defined while running included; a view's table is made when it first publishes,
    /// as `spec_now` then defines it); it connects when it first delivers (a database that is
    /// down does not keep the server from starting).
    pub fn open(
        url: &PostgresUrl,
        spec: &Spec,
        spec_now: Option<SpecNow>,
    ) -> Result<PostgresDestination, String> {
        let current = spec_now.as_ref().and_then(|now| now());
        let spec = current.as_deref().unwrap_or(spec);
        let mut tables = Vec::new();
        for view in &spec.views {
            if url.takes(&view.name) {
                tables.push(table_of(url, spec, view)?);
            }
        }
        if let Some(missing) = url
            .views
            .iter()
            .find(|v| !spec.views.iter().any(|w| &&w.name == v))
        {
            return Err(format!("{}: the spec has no view {missing}", url.name()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{}: cannot start its client: {e}", url.name()))?;
        Ok(PostgresDestination {
            url: url.clone(),
            tables,
            spec_now,
            runtime,
            connection: None,
            applied: None,
            last_seen: None,
            said: None,
            confirmed: 0,
            delivered: 0,
        })
    }

    /// The TLS the connection offers: none with `sslmode=disable`; else rustls
    /// ([`crate::io::tls`]), which `sslmode=prefer` (the default) uses when the server
    /// speaks TLS and `require` insists on. The server's certificate is always verified
    /// (as libpq's `verify-full`). With no trusted certificate at all, `prefer` connects
    /// without TLS; `require` is an error.
    fn tls(&self) -> Result<Option<MakeRustlsConnect>, String> {
        if self.url.config.get_ssl_mode() == SslMode::Disable {
            return Ok(None);
        }
        match crate::io::tls::client_config(self.url.ca.as_deref()) {
            Ok(config) => Ok(Some(MakeRustlsConnect::new((*config).clone()))),
            Err(_)
                if self.url.ca.is_none() && self.url.config.get_ssl_mode() == SslMode::Prefer =>
            {
                Ok(None)
            }
            Err(why) => Err(why),
        }
    }

    /// Connects, makes the tables and reads the position back.
    fn connect(&mut self) -> Result<(), String> {
        let name = self.url.name();
        let mut config = self.url.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let tables = self.tables.clone();
        let tls = self.tls()?;
        let (connection, applied) = self.runtime.block_on(async move {
            let client = match tls {
                Some(tls) => connect(&config, tls).await?,
                None => connect(&config, NoTls).await?,
            };
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {POSITIONS} (sink text PRIMARY KEY, position bigint NOT NULL, engine_time bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
                ))
                .await
                .map_err(|e| format!("cannot create {POSITIONS}: {e}"))?;
            let mut statements = BTreeMap::new();
            for table in &tables {
                let prepared = prepare_table(&client, table, false).await?;
                statements.insert(table.view.clone(), prepared);
            }
            let position = client
                .prepare(&format!(
                    "INSERT INTO {POSITIONS} (sink, position, engine_time) VALUES ($1, $2, $3) ON CONFLICT (sink) DO UPDATE SET position = EXCLUDED.position, engine_time = EXCLUDED.engine_time, updated_at = now()"
                ))
                .await
                .map_err(|e| format!("cannot prepare the position's statement: {e}"))?;
            let row = client
                .query_opt(
                    &format!("SELECT position, engine_time FROM {POSITIONS} WHERE sink = $1"),
                    &[&name],
                )
                .await
                .map_err(|e| format!("cannot read the position: {e}"))?;
            let applied = row.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64));
            Ok::<_, String>((
                Connection {
                    client,
                    statements,
                    position,
                },
                applied,
            ))
        })?;
        self.connection = Some(connection);
        self.applied = applied;
        Ok(())
    }

    /// Applies `changes` of the group at `position`, up to engine time `time`, in one
    /// transaction with the position.
    fn apply(&mut self, position: u64, time: u64, changes: &[&Change]) -> Result<(), String> {
        let name = self.url.name();
        let tables = &self.tables;
        let Some(connection) = self.connection.as_mut() else {
            return Err("internal error: not connected".into());
        };
        self.runtime.block_on(async {
            let transaction = connection
                .client
                .transaction()
                .await
                .map_err(|e| format!("cannot begin: {e}"))?;
            // every row's statement first, then all of them at once: tokio-postgres
            // pipelines them on the connection, and PostgreSQL runs them in order
            type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
            let mut rows = Vec::with_capacity(changes.len());
            for change in changes {
                let (Some((upsert, delete)), Some(table)) = (
                    connection.statements.get(&change.view),
                    tables.iter().find(|t| t.view == change.view),
                ) else {
                    continue;
                };
                if change.diff < 0 {
                    rows.push((delete, &change.key, None, 0));
                    continue;
                }
                let row: serde_json::Value = serde_json::from_str(&change.row).unwrap_or_default();
                let values: Vec<Option<String>> = table
                    .fields
                    .iter()
                    .map(|(f, _)| row.get(f).filter(|v| !v.is_null()).map(|v| v.to_string()))
                    .collect();
                rows.push((upsert, &change.key, Some(values), change.time as i64));
            }
            let params: Vec<Vec<Param<'_>>> = rows
                .iter()
                .map(|(_, key, values, time)| {
                    let mut params: Vec<Param<'_>> = vec![*key];
                    if let Some(values) = values {
                        params.extend(values.iter().map(|v| v as Param<'_>));
                        params.push(time);
                    }
                    params
                })
                .collect();
            let statements = rows
                .iter()
                .zip(&params)
                .map(|((statement, ..), params)| transaction.execute(*statement, params));
            futures_util::future::try_join_all(statements)
                .await
                .map_err(|e| format!("cannot write a row: {e}"))?;
            let (at, when) = (position as i64, time as i64);
            transaction
                .execute(&connection.position, &[&name, &at, &when])
                .await
                .map_err(|e| format!("cannot save the position: {e}"))?;
            transaction
                .commit()
                .await
                .map_err(|e| format!("cannot commit: {e}"))
        })?;
        self.applied = Some((position, time));
        self.delivered += changes.len() as u64;
        Ok(())
    }

    /// Applies `group`'s changes but those the tables hold already, in one transaction
    /// with the position: the group completes engine time `group.time`, so a table goes
    /// from the view at one engine time to the view at a later one. A group with nothing
    /// for these tables moves only the position, and only when it is `last` of those
    /// offered (so a quiet view costs one small transaction per delivery, not one per group).
    fn apply_group(&mut self, group: &Group, last: bool) -> Result<(), String> {
        let fresh = self.follow_views(group)?;
        let applied = self.applied;
        // a later group at the position and engine time of the one before it (a view change,
        // a rebuild's switch-over) is new, unless a later one was applied already: applied
        // again, it leaves the tables as they were (its rows and their deletions are those
        // the tables hold)
        let at = (group.position, group.time);
        let again = self.last_seen.replace(at) == Some(at) && applied == Some(at);
        let held = |time: u64| {
            !again
                && applied
                    .is_some_and(|(p, t)| group.position < p || (group.position == p && time <= t))
        };
        let pending: Vec<&Change> = group
            .changes
            .iter()
            .filter(|c| {
                self.tables.iter().any(|t| t.view == c.view)
                    && (fresh.contains(&c.view) || !held(c.time))
            })
            .collect();
        let behind = applied.is_none_or(|a| a < (group.position, group.time));
        if pending.is_empty() && !(last && behind) {
            return Ok(());
        }
        self.apply(group.position, group.time, &pending)
    }
}

impl PostgresDestination {
    /// Makes the tables of the views `group` publishes that have none yet (views defined
    /// while the server runs), and makes again, empty, the table of a view whose fields were
    /// redefined, as the running spec defines them now. A redefinition publishes the `-1`s
    /// of the old rows and the `+1`s of the new ones in one group, so the table made again
    /// ends that group as the view. A deleted view's table stays, emptied by its `-1`s.
    ///
    /// Returns the views whose changes in `group` are all applied, even at the position and
    /// engine time the tables hold already: a view change is published at the position and
    /// clock of the last input, so its group cannot be told from the one before by them.
    /// These are the views whose table it made (empty, so nothing was applied to them yet)
    /// and the views deleted (their `-1`s remove what is there; deleting twice is the same).
    fn follow_views(&mut self, group: &Group) -> Result<BTreeSet<String>, String> {
        let mut fresh = BTreeSet::new();
        let Some(spec) = self.spec_now.as_ref().and_then(|now| now()) else {
            return Ok(fresh);
        };
        let published: BTreeSet<&str> = group.changes.iter().map(|c| c.view.as_str()).collect();
        let mut changed = Vec::new();
        for name in published {
            let Some(view) = spec.views.iter().find(|v| v.name == name) else {
                if self.tables.iter().any(|t| t.view == name) {
                    fresh.insert(name.to_string());
                }
                continue;
            };
            if !self.url.takes(name) {
                continue;
            }
            let table = table_of(&self.url, &spec, view)?;
            match self.tables.iter().find(|t| t.view == name) {
                Some(had) if had.fields == table.fields => {}
                had => changed.push((table, had.is_some())),
            }
        }
        if changed.is_empty() {
            return Ok(fresh);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err("internal error: not connected".into());
        };
        let statements = self.runtime.block_on(async {
            let mut statements = Vec::new();
            for (table, replace) in &changed {
                statements.push(prepare_table(&connection.client, table, *replace).await?);
            }
            Ok::<_, String>(statements)
        })?;
        for ((table, _), prepared) in changed.into_iter().zip(statements) {
            connection.statements.insert(table.view.clone(), prepared);
            self.tables.retain(|t| t.view != table.view);
            fresh.insert(table.view.clone());
            self.tables.push(table);
        }
        Ok(fresh)
    }
}

/// Whether table `table` has the columns `have` (name, data type) its view needs: an
/// error naming the first that differs.
fn check_columns(table: &Table, have: &[(String, String)]) -> Result<(), String> {
    let want = table.columns();
    for (i, (column, kind)) in want.iter().enumerate() {
        match have.get(i) {
            Some((c, k)) if c == column && k == kind => {}
            Some((c, k)) => {
                return Err(format!(
                    "table {} does not match view {}: column {} is {c} {k}, the view needs {column} {kind}",
                    table.name,
                    table.view,
                    i + 1
                ));
            }
            None => {
                return Err(format!(
                    "table {} does not match view {}: it has no column {column} ({kind})",
                    table.name, table.view
                ));
            }
        }
    }
    if let Some((c, _)) = have.get(want.len()) {
        return Err(format!(
            "table {} does not match view {}: column {c} is not one of the view's",
            table.name, table.view
        ));
    }
    Ok(())
}

impl Destination for PostgresDestination {
    fn deliver(&mut self, groups: &[Group]) -> Result<usize, String> {
        let name = self.url.name();
        if self.connection.is_none()
            && let Err(why) = self.connect()
        {
            if why.contains("does not match") && self.said.as_deref() != Some(&why) {
                eprintln!("throughline: error: {name}: {why}");
                self.said = Some(why.clone());
            }
            return Err(format!("{name}: {why}"));
        }
        for (taken, group) in groups.iter().enumerate() {
            if let Err(why) = self.apply_group(group, taken + 1 == groups.len()) {
                // the connection may be gone: the next attempt connects and reads back
                // what the tables hold
                self.connection = None;
                return match taken {
                    0 => Err(format!("{name}: {why}")),
                    n => Ok(n),
                };
            }
            self.confirmed = group.position;
        }
        Ok(groups.len())
    }

    fn progress(&mut self) -> Progress {
        Progress {
            confirmed: self.confirmed,
            delivered: self.delivered,
            ..Progress::default()
        }
    }

    fn sends_again(&self) -> bool {
        true
    }

    fn finish(&mut self, _patience: Duration) -> Result<String, String> {
        Ok(format!(
            "{}: applied {} changes",
            self.url.name(),
            self.delivered
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_without_leaking_the_password() {
        let url = PostgresUrl::parse(
            "postgres://app:s3cret@127.0.0.1:5433/crm?view=marketing_audience&table=audience&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(url.views, vec!["marketing_audience"]);
        assert_eq!(url.table.as_deref(), Some("audience"));
        assert!(!url.name().contains("s3cret"));
        assert_eq!(
            url.name(),
            "postgres://app@127.0.0.1:5433/crm?view=marketing_audience&table=audience"
        );
        assert!(PostgresUrl::parse("postgres://u@h/db?table=t").is_err());
        let url = PostgresUrl::parse("postgres://u@h/db?sslmode=require&ca=/etc/ca.pem").unwrap();
        assert_eq!(url.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert!(PostgresUrl::parse("postgres://u@h/db?sslmode=disable&ca=/etc/ca.pem").is_err());
    }

    #[test]
    fn a_table_that_differs_names_the_column() {
        let table = Table {
            view: "v".into(),
            name: "t".into(),
            fields: vec![("score".into(), Column::Number)],
        };
        let have = |cols: &[(&str, &str)]| -> Vec<(String, String)> {
            cols.iter()
                .map(|(c, k)| (c.to_string(), k.to_string()))
                .collect()
        };
        let good = have(&[
            ("key", "text"),
            ("score", "double precision"),
            ("engine_time", "bigint"),
        ]);
        assert!(check_columns(&table, &good).is_ok());
        let wrong = have(&[
            ("key", "text"),
            ("score", "text"),
            ("engine_time", "bigint"),
        ]);
        let why = check_columns(&table, &wrong).unwrap_err();
        assert!(why.contains("score text"), "{why}");
        let short = have(&[("key", "text"), ("score", "double precision")]);
        assert!(
            check_columns(&table, &short)
                .unwrap_err()
                .contains("engine_time")
        );
    }
}
