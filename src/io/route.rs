//! The server's routes as one table: which paths exist and which method each takes.
//!
//! [`route`] is a pure function of (method, path), so it is tested on its own: it never
//! panics, every answer is one of a closed set, and a path that exists with another method
//! is a 405 with the `Allow` header (not a 404).

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`
    Healthz,
    /// `GET /metrics`
    Metrics,
    /// `GET /v1/views/{name}`
    View(&'a str),
    /// `GET /v1/views/{name}/changes`
    Changes(&'a str),
    /// `PUT /v1/views/{name}`: define or redefine a view.
    PutView(&'a str),
    /// `DELETE /v1/views/{name}`
    DeleteView(&'a str),
    /// `POST /v1/views/{name}/preview`: the rows a definition would have now.
    PreviewView(&'a str),
    /// `GET /v1/spec`: the spec the server runs, as TOML.
    Spec,
    /// `PUT /v1/spec`: a whole new spec.
    PutSpec,
    /// `GET /v1/profiles/{type}:{value}` (still percent-encoded)
    Profile(&'a str),
    /// `GET /v1/profiles/{type}:{value}/explain` (still percent-encoded)
    Explain(&'a str),
    /// `POST /v1/compact`
    Compact,
    /// `GET /` and `GET /console/…`: the console's pages (see [`crate::io::console`]).
    Console(&'a str),
    /// `GET /v1/stats`: what the console's overview shows.
    Stats,
    /// `POST /v1/{endpoint}`: one of [`INGEST`].
    Ingest(&'a str),
    /// No such path: 404.
    NotFound,
    /// The path exists but not with this method: 405, with `Allow` set to this.
    MethodNotAllowed(&'static str),
}

/// The ingestion endpoints (`POST /v1/{endpoint}`).
pub const INGEST: [&str; 9] = [
    "track", "identify", "page", "screen", "alias", "group", "batch", "ingest", "forget",
];

/// The route of a request for `path` (without the query string) with `method`.
pub fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    match resource(path) {
        None => Route::NotFound,
        Some((Route::View(name), _)) if method == "PUT" => Route::PutView(name),
        Some((Route::View(name), _)) if method == "DELETE" => Route::DeleteView(name),
        Some((Route::Spec, _)) if method == "PUT" => Route::PutSpec,
        Some((route, allow)) if allow == method => route,
        Some((Route::View(_), _)) => Route::MethodNotAllowed("GET, PUT, DELETE"),
        Some((Route::Spec, _)) => Route::MethodNotAllowed("GET, PUT"),
        Some((_, allow)) => Route::MethodNotAllowed(allow),
    }
}

/// The resource at `path` and the one method it takes.
fn resource(path: &str) -> Option<(Route<'_>, &'static str)> {
    match path {
        "/healthz" => return Some((Route::Healthz, "GET")),
        "/metrics" => return Some((Route::Metrics, "GET")),
        "/v1/compact" => return Some((Route::Compact, "POST")),
        "/v1/stats" => return Some((Route::Stats, "GET")),
        "/v1/spec" => return Some((Route::Spec, "GET")),
        "/" | "/console" => return Some((Route::Console(path), "GET")),
        _ => {}
    }
    if path.starts_with("/console/") {
        return Some((Route::Console(path), "GET"));
    }
    if let Some(endpoint) = path.strip_prefix("/v1/")
        && INGEST.contains(&endpoint)
    {
        return Some((Route::Ingest(endpoint), "POST"));
    }
    if let Some(rest) = path.strip_prefix("/v1/views/") {
        let one_segment = |s: &str| !s.is_empty() && !s.contains('/');
        if let Some(name) = rest.strip_suffix("/preview")
            && one_segment(name)
        {
            return Some((Route::PreviewView(name), "POST"));
        }
        return match rest.strip_suffix("/changes") {
            Some(name) if one_segment(name) => Some((Route::Changes(name), "GET")),
            _ if one_segment(rest) => Some((Route::View(rest), "GET")),
            _ => None,
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/profiles/") {
        return match rest.strip_suffix("/explain") {
            Some(id) if !id.is_empty() => Some((Route::Explain(id), "GET")),
            _ if !rest.is_empty() => Some((Route::Profile(rest), "GET")),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_table() {
        assert_eq!(route("GET", "/healthz"), Route::Healthz);
        assert_eq!(route("POST", "/healthz"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("GET", "/v1/batch"), Route::MethodNotAllowed("POST"));
        assert_eq!(route("POST", "/v1/batch"), Route::Ingest("batch"));
        assert_eq!(route("POST", "/v1/nothing"), Route::NotFound);
        assert_eq!(route("GET", "/v1/views/scores"), Route::View("scores"));
        assert_eq!(
            route("GET", "/v1/views/scores/changes"),
            Route::Changes("scores")
        );
        assert_eq!(route("PUT", "/v1/views/scores"), Route::PutView("scores"));
        assert_eq!(
            route("DELETE", "/v1/views/scores"),
            Route::DeleteView("scores")
        );
        assert_eq!(
            route("POST", "/v1/views/scores"),
            Route::MethodNotAllowed("GET, PUT, DELETE")
        );
        assert_eq!(
            route("POST", "/v1/views/scores/preview"),
            Route::PreviewView("scores")
        );
        assert_eq!(
            route("PUT", "/v1/views/scores/changes"),
            Route::MethodNotAllowed("GET")
        );
        assert_eq!(route("GET", "/v1/views/"), Route::NotFound);
        assert_eq!(route("GET", "/v1/views/a/b"), Route::NotFound);
        assert_eq!(
            route("GET", "/v1/profiles/user_id:u-1"),
            Route::Profile("user_id:u-1")
        );
        assert_eq!(
            route("GET", "/v1/profiles/user_id:u-1/explain"),
            Route::Explain("user_id:u-1")
        );
        // the path that once panicked (prefix and suffix overlap)
        assert_eq!(
            route("GET", "/v1/profiles/explain"),
            Route::Profile("explain")
        );
        assert_eq!(
            route("GET", "/v1/profiles//explain"),
            Route::Profile("/explain")
        );
        assert_eq!(route("GET", "/v1/profiles/"), Route::NotFound);
        assert_eq!(route("GET", "/"), Route::Console("/"));
        assert_eq!(
            route("GET", "/console/app.js"),
            Route::Console("/console/app.js")
        );
        assert_eq!(route("POST", "/"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("GET", "/v1/stats"), Route::Stats);
        assert_eq!(route("GET", "/v1/spec"), Route::Spec);
        assert_eq!(route("PUT", "/v1/spec"), Route::PutSpec);
        assert_eq!(
            route("POST", "/v1/spec"),
            Route::MethodNotAllowed("GET, PUT")
        );
        assert_eq!(
            route("DELETE", "/v1/compact"),
            Route::MethodNotAllowed("POST")
        );
    }

    fn arb_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just("/v1".to_string()),
            Just("/v1/".to_string()),
            Just("views".to_string()),
            Just("profiles".to_string()),
            Just("explain".to_string()),
            Just("changes".to_string()),
            Just("batch".to_string()),
            Just("%".to_string()),
            Just("%ff".to_string()),
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn any_request_gets_one_answer_from_a_closed_set(
            method in prop_oneof![
                Just("GET".to_string()),
                Just("POST".to_string()),
                Just("PUT".to_string()),
                Just("DELETE".to_string()),
                any::<String>(),
            ],
            path in arb_path(),
        ) {
            let first = route(&method, &path);
            prop_assert_eq!(first, route(&method, &path));
            match first {
                Route::MethodNotAllowed(allow) => {
                    prop_assert!(["GET", "POST", "GET, PUT, DELETE", "GET, PUT"].contains(&allow));
                }
                Route::View(s) | Route::Changes(s) | Route::Profile(s) | Route::Explain(s)
                | Route::Ingest(s) | Route::Console(s) | Route::PutView(s) | Route::DeleteView(s)
                | Route::PreviewView(s) => {
                    prop_assert!(!s.is_empty());
                    prop_assert!(path.contains(s));
                }
                _ => {}
            }
        }
    }
}
