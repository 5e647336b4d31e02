//! The dashboard: server-rendered HTML pages, no script and no build step. `/` lists the
//! token's clients and their environments; `/clients/{client}` one client; `/env/{env}` one
//! environment: what runs, the run in flight and its journal, a waiting run, history, runs
//! (rehearsals included) with links to their HTML reports at `/env/{env}/runs/{run}/report`.
//!
//! The environment page also shows the GitOps controller's view of it (commit applied, last
//! attempt, a failed commit with a **Retry** button, drift) and its scheduled rehearsals (next
//! due time, last result with its report, missed due times).
//!
//! It takes the same tokens as the API, typed once into a login form: `POST /login` checks it
//! and sets it as an `HttpOnly; SameSite=Lax` cookie (scripts cannot read it; other sites cannot
//! post with it, and the dashboard has no state-changing GET). `POST /logout` clears it. Pages
//! only read, so they need the `read` right; the same tenant rule as the API applies (an
//! environment the token does not see answers like one that does not exist). Every text that
//! comes from a manifest, the store or a run is escaped.
//!
//! The one form that changes something, `POST /env/{env}/gitops/retry`, needs the `promote`
//! right and is refused (403) unless it comes from the dashboard's own page: its `Origin` (or,
//! without one, its `Referer`) must be this host, because SameSite counts every port of a host
//! as the same site; and it must carry the page's form token, derived from the session cookie
//! (another page cannot read the cookie, so it cannot forge the token).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::Shared;
use super::api::{self, ApiError};
use super::auth::Resolved;
use super::gitops::short;
use crate::manifest::config::Right;
use crate::report::escape_html as esc;

const COOKIE: &str = "rollout_token";

pub fn router() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/", get(index))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/clients/{client}", get(client_page))
        .route("/env/{env}", get(environment_page))
        .route("/env/{env}/gitops/retry", post(retry))
        .route("/env/{env}/runs/{run}/report", get(report_page))
}

/// The dashboard cookie's value.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| super::auth::cookie(h, COOKIE))
}

/// The caller's token from the dashboard cookie, or the login page (401) to answer with.
fn session(daemon: &Shared, headers: &HeaderMap, here: &str) -> Result<Resolved, Box<Response>> {
    cookie_value(headers)
        .and_then(|t| daemon.tokens.find(t).cloned())
        .ok_or_else(|| Box::new(login_page(StatusCode::UNAUTHORIZED, here, None)))
}

/// The form token of a session: derived from its cookie, which only the dashboard's own pages
/// (rendered by this server) can put into a form.
fn form_token(cookie: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"rollout dashboard form token\0");
    h.update(cookie.as_bytes());
    format!("{:x}", h.finalize())
}

/// Whether a POST comes from a page of this very origin: its `Origin`, or without one its
/// `Referer`, is `http(s)://<Host>`.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(host) = get(header::HOST) else {
        return false;
    };
    let ours = [format!("http://{host}"), format!("https://{host}")];
    match get(header::ORIGIN) {
        Some(origin) => ours.iter().any(|o| o == origin),
        None => get(header::REFERER).is_some_and(|r| {
            ours.iter().any(|o| {
                r.strip_prefix(o.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        }),
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · rollout</title><style>{STYLE}</style></head>\
<body><header><a href=\"/\">rollout</a><form method=\"post\" action=\"/logout\"><button>Log out</button></form></header>\
<main>{body}</main></body></html>\n",
        esc(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}\
header{display:flex;justify-content:space-between;align-items:center;background:#1d2330;padding:.6em 1.2em}\
header a{color:#fff;font-weight:600;text-decoration:none}header form{margin:0}\
main{max-width:64em;margin:1.5em auto;padding:0 1.2em}\
h1{font-size:1.5em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.6em 0 .5em}\
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:.8em 1.1em;margin-bottom:1em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #eceef2;vertical-align:top}\
th{font-weight:600;color:#4a5263}.ok{color:#17803d;font-weight:600}.bad{color:#b42318;font-weight:600}.warn{color:#9a6700;font-weight:600}\
.muted{color:#6b7385}code{font-size:.92em}pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f5f6f8;padding:.5em}input{font:inherit;padding:.4em;width:24em}button{font:inherit;padding:.35em .9em}";

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"bad\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        status,
        "Log in",
        &format!(
            "<h1>Log in</h1><section>{error}<form method=\"post\" action=\"/login\">\
<p><label>API token<br><input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{}\"><p><button type=\"submit\">Log in</button></p></form>\
<p class=\"muted\">The token of rollout.yaml's <code>daemon.tokens</code> (the value of its <code>fromEnv</code> variable).</p></section>",
            esc(next)
        ),
    )
}

#[derive(Debug, Deserialize)]
struct Next {
    next: Option<String>,
}

async fn login_form(Query(q): Query<Next>) -> Response {
    login_page(StatusCode::OK, &safe_next(q.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
    next: Option<String>,
}

/// Only a path of this site: never `//host` or `https://...` (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

async fn login(State(daemon): State<Shared>, Form(form): Form<Login>) -> Response {
    let next = safe_next(form.next.as_deref());
    let Some(token) = daemon.tokens.find(form.token.trim()) else {
        return login_page(StatusCode::UNAUTHORIZED, &next, Some("Unknown token."));
    };
    tracing::info!(token = %token.name, "dashboard login");
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Lax; Path=/; Max-Age=43200",
        form.token.trim()
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
    )
        .into_response()
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"),
            ),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}

fn error_page(e: ApiError) -> Response {
    let title = e.status.canonical_reason().unwrap_or("Error").to_string();
    page(
        e.status,
        &title,
        &format!(
            "<h1>{}</h1><section><p class=\"bad\">{}</p></section>",
            esc(&title),
            esc(&e.message)
        ),
    )
}

async fn index(State(daemon): State<Shared>, headers: HeaderMap) -> Response {
    let token = match session(&daemon, &headers, "/") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if let Err(e) = api::require(&token, Right::Read) {
        return error_page(e);
    }
    let envs = match api::visible(&daemon, &token) {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let mut body = format!(
        "<h1>Clients</h1><p class=\"muted\">Signed in with token <code>{}</code>.</p>",
        esc(&token.name)
    );
    for client in &token.clients {
        body.push_str(&format!(
            "<section><h2><a href=\"/clients/{0}\">{1}</a></h2><ul>",
            esc(client),
            esc(client)
        ));
        for (name, _) in envs.iter().filter(|(_, c)| c == client) {
            body.push_str(&format!(
                "<li><a href=\"/env/{0}\">{1}</a></li>",
                esc(name),
                esc(name)
            ));
        }
        body.push_str("</ul></section>");
    }
    page(StatusCode::OK, "Clients", &body)
}

async fn client_page(
    State(daemon): State<Shared>,
    headers: HeaderMap,
    Path(client): Path<String>,
) -> Response {
    let token = match session(&daemon, &headers, &format!("/clients/{client}")) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if let Err(e) = api::require(&token, Right::Read) {
        return error_page(e);
    }
    if !token.sees(&client) {
        return error_page(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("no access to client `{client}`"),
        ));
    }
    let envs = match api::visible(&daemon, &token) {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let mut body = format!(
        "<h1>Client {}</h1><section><table><tr><th>Environment</th><th>Revision</th><th>Newest run</th></tr>",
        esc(&client)
    );
    for (name, _) in envs.iter().filter(|(_, c)| *c == client) {
        let n = name.clone();
        let (current, latest) = daemon
            .store
            .call(move |s| Ok((s.current(&n)?, s.latest_run(&n)?)))
            .await
            .unwrap_or((None, None));
        body.push_str(&format!(
            "<tr><td><a href=\"/env/{0}\">{0}</a></td><td>{1}</td><td>{2}</td></tr>",
            esc(name),
            current.map_or("none".into(), |r| format!("{} ({})", r.number, esc(&r.run))),
            latest.map_or("none".into(), |r| format!(
                "{} {} <span class=\"{}\">{}</span>",
                esc(&r.kind),
                esc(&r.run),
                outcome_class(&r.outcome),
                esc(&r.outcome)
            )),
        ));
    }
    body.push_str("</table></section>");
    page(StatusCode::OK, &format!("Client {client}"), &body)
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "promoted" | "passed" | "restored" => "ok",
        "running" | "waiting" | "awaitingApproval" => "warn",
        _ => "bad",
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => String::new(),
        other => esc(&other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct Notice {
    retry: Option<String>,
}

async fn environment_page(
    State(daemon): State<Shared>,
    headers: HeaderMap,
    Path(env): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    let token = match session(&daemon, &headers, &format!("/env/{env}")) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let client = match api::environment(&daemon, &token, &env, Right::Read) {
        Ok(c) => c,
        Err(e) => return error_page(e),
    };
    let mut body = format!(
        "<h1>{} <span class=\"muted\">· client <a href=\"/clients/{}\">{}</a></span></h1>",
        esc(&env),
        esc(&client),
        esc(&client)
    );
    if notice.retry.as_deref() == Some("queued") {
        body.push_str("<p class=\"ok\" id=\"notice\">Retry requested: the GitOps controller tries the failed commit again now.</p>");
    }

    // What runs, and any run in flight.
    match api::status_of(&daemon, &env, &client).await {
        Ok(status) => {
            body.push_str("<h2>What runs</h2><section>");
            match status["revision"].as_object() {
                Some(r) => body.push_str(&format!(
                    "<p>Revision <b>{}</b> (run <code>{}</code>), by {}, {}</p>",
                    text(&r["number"]),
                    text(&r["run"]),
                    text(&r["user"]),
                    text(&r["finished"])
                )),
                None => body.push_str("<p class=\"muted\">No promoted revision yet.</p>"),
            }
            body.push_str("<table><tr><th>Service</th><th>Wants</th><th>Runs</th></tr>");
            for s in status["services"].as_array().into_iter().flatten() {
                let containers: Vec<String> = s["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        format!(
                            "<code>{}</code> {} ({}{})",
                            text(&c["name"]),
                            text(&c["image"]),
                            text(&c["state"]),
                            c["health"]
                                .as_str()
                                .map(|h| format!(", {}", esc(h)))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                body.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    text(&s["name"]),
                    text(&s["desiredImage"]),
                    if containers.is_empty() {
                        "<span class=\"bad\">not running</span>".to_string()
                    } else {
                        containers.join("<br>")
                    }
                ));
            }
            body.push_str("</table></section>");

            body.push_str("<h2>Current run</h2><section>");
            let in_flight = status["inFlight"].as_array().cloned().unwrap_or_default();
            let interrupted = status["interrupted"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if in_flight.is_empty() && interrupted.is_empty() && status["waiting"].is_null() {
                body.push_str("<p class=\"muted\">No run in flight.</p>");
            }
            for r in &in_flight {
                let run = r["run"].as_str().unwrap_or_default().to_string();
                body.push_str(&format!(
                    "<p class=\"warn\">In flight: run <code>{}</code> (revision {}, started {} by {}), now at <code>{}</code></p>",
                    esc(&run),
                    text(&r["revision"]),
                    text(&r["started"]),
                    text(&r["leftBy"]),
                    text(&r["lastStep"])
                ));
                let journal = daemon
                    .store
                    .call(move |s| s.journal(&run))
                    .await
                    .unwrap_or_default();
                body.push_str("<table><tr><th>Step</th><th>At</th></tr>");
                for e in journal {
                    body.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td></tr>",
                        esc(&e.label()),
                        esc(&e.at.to_string())
                    ));
                }
                body.push_str("</table>");
            }
            for r in &interrupted {
                body.push_str(&format!(
                    "<p class=\"bad\">Interrupted: run <code>{}</code>, left by {} after <code>{}</code>; the next promote or rollback settles it.</p>",
                    text(&r["run"]),
                    text(&r["leftBy"]),
                    text(&r["lastStep"])
                ));
            }
            if let Some(w) = status["waiting"].as_object() {
                let awaiting: Vec<String> = w["awaiting"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| text(&a["gate"]))
                    .collect();
                body.push_str(&format!(
                    "<p class=\"warn\">Waiting: run <code>{}</code> (started by {}) waits for {}.</p>",
                    text(&w["run"]),
                    text(&w["user"]),
                    awaiting.join(", ")
                ));
            }
            body.push_str("</section>");
        }
        Err(e) => body.push_str(&format!(
            "<h2>What runs</h2><section><p class=\"bad\">Could not read the status: {}</p></section>",
            esc(&e.message)
        )),
    }

    let cookie = cookie_value(&headers).unwrap_or_default();
    body.push_str(&gitops_section(&daemon, &token, &env, cookie));
    body.push_str(&schedule_section(&daemon, &token, &env));

    // History.
    let n = env.clone();
    let history = daemon
        .store
        .call(move |s| s.history(&n))
        .await
        .unwrap_or_default();
    body.push_str("<h2>History</h2><section>");
    if history.is_empty() {
        body.push_str("<p class=\"muted\">No revision yet.</p>");
    } else {
        body.push_str("<table><tr><th>Revision</th><th>Run</th><th>Started</th><th>By</th><th>Outcome</th><th>Reason</th></tr>");
        for r in &history {
            let outcome = serde_json::to_value(&r.outcome).unwrap_or_default();
            let why = outcome["reason"].as_str().map(String::from);
            let outcome = outcome["status"].as_str().unwrap_or_default().to_string();
            let reason = match (r.reason.as_deref(), why) {
                (Some(a), Some(b)) => format!("{a} ({b})"),
                (Some(a), None) => a.to_string(),
                (None, Some(b)) => b,
                (None, None) => String::new(),
            };
            body.push_str(&format!(
                "<tr><td>{}</td><td><a href=\"/env/{}/runs/{}/report\"><code>{}</code></a></td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                r.number,
                esc(&env),
                esc(&r.run),
                esc(&r.run),
                esc(&r.started.to_string()),
                esc(&r.user),
                outcome_class(&outcome),
                esc(&outcome),
                esc(&reason)
            ));
        }
        body.push_str("</table>");
    }
    body.push_str("</section>");

    // Runs: rehearsals apart, then all runs with their reports.
    let runs = api::run_list(&daemon, &env, 50).await.unwrap_or_default();
    let row = |r: &Value| {
        let outcome = r["outcome"].as_str().unwrap_or_default();
        format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td><a href=\"/env/{}/runs/{}/report\">report</a></td></tr>",
            text(&r["run"]),
            text(&r["kind"]),
            text(&r["started"]),
            text(&r["user"]),
            outcome_class(outcome),
            esc(outcome),
            text(&r["reason"]),
            esc(&env),
            text(&r["run"]),
        )
    };
    let head = "<table><tr><th>Run</th><th>Kind</th><th>Started</th><th>By</th><th>Outcome</th><th>Reason</th><th></th></tr>";
    let rehearsals: Vec<&Value> = runs.iter().filter(|r| r["kind"] == "rehearsal").collect();
    body.push_str("<h2>Rehearsals</h2><section>");
    if rehearsals.is_empty() {
        body.push_str("<p class=\"muted\">No rehearsal yet.</p>");
    } else {
        body.push_str(head);
        for r in rehearsals {
            body.push_str(&row(r));
        }
        body.push_str("</table>");
    }
    body.push_str("</section><h2>Runs and reports</h2><section>");
    if runs.is_empty() {
        body.push_str("<p class=\"muted\">No run yet.</p>");
    } else {
        body.push_str(head);
        for r in &runs {
            body.push_str(&row(r));
        }
        body.push_str("</table>");
    }
    body.push_str("</section>");
    page(StatusCode::OK, &env, &body)
}

fn tag(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_default()
}

/// What the GitOps controller knows of `env` (nothing without a controller).
fn gitops_section(daemon: &Shared, token: &Resolved, env: &str, cookie: &str) -> String {
    let view = match api::gitops_view(daemon, token) {
        Ok(Some(v)) => v,
        Ok(None) => return String::new(),
        Err(e) => {
            return format!(
                "<h2>GitOps</h2><section id=\"gitops\"><p class=\"bad\">{}</p></section>",
                esc(&e.message)
            );
        }
    };
    let mut out = String::from("<h2>GitOps</h2><section id=\"gitops\">");
    let fetch = &view["fetch"];
    let fetched = match fetch["state"].as_str() {
        Some("ok") => format!(
            "<span class=\"ok\">fetched</span> {}",
            text(&view["lastFetchOk"])
        ),
        Some("notYet") | None => "<span class=\"muted\">not fetched yet</span>".into(),
        Some(state) => format!(
            "<span class=\"bad\">{}</span>: {} (last good fetch: {})",
            esc(state),
            text(&fetch["message"]),
            view["lastFetchOk"].as_str().map_or("never".into(), esc)
        ),
    };
    out.push_str(&format!(
        "<p>Follows <code>{}</code>, branch <code>{}</code>, at <code>{}</code> {}; {}</p>",
        text(&view["repo"]),
        text(&view["branch"]),
        view["commit"]
            .as_str()
            .map_or(String::new(), |c| esc(short(c))),
        text(&view["subject"]),
        fetched
    ));
    let found = view["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == env);
    let Some(e) = found else {
        let removed = view["removed"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["environment"] == env);
        match removed {
            Some(r) => out.push_str(&format!(
                "<p class=\"warn\">Not followed any more: {}</p>",
                text(&r["message"])
            )),
            None => out.push_str("<p class=\"muted\">The repository has no manifest for this environment: the controller does not follow it.</p>"),
        }
        out.push_str("</section>");
        return out;
    };
    let attempt = |a: &Value| {
        if a.is_null() {
            return "<span class=\"muted\">none yet</span>".to_string();
        }
        let outcome = tag(&a["outcome"]);
        let run = a["run"].as_str().map_or(String::new(), |r| {
            format!(
                ", run <a href=\"/env/{}/runs/{}/report\"><code>{}</code></a>",
                esc(env),
                esc(r),
                esc(r)
            )
        });
        format!(
            "<span class=\"{}\">{}</span> ({}) at commit <code>{}</code>, {}{run}",
            outcome_class(&outcome),
            esc(&outcome),
            text(&a["trigger"]),
            esc(short(a["commit"].as_str().unwrap_or_default())),
            text(&a["at"])
        )
    };
    let drift = match e["drift"]["state"].as_str() {
        Some("inSync") => "<span class=\"ok\">in sync</span>".to_string(),
        Some("drifted") => {
            "<span class=\"bad\">drifted</span>: what runs differs from the manifest".to_string()
        }
        Some("error") => format!(
            "<span class=\"warn\">not checked</span>: {}",
            text(&e["drift"]["message"])
        ),
        _ => "<span class=\"muted\">not checked yet</span>".to_string(),
    };
    out.push_str(&format!(
        "<table><tr><th>Commit applied</th><td>{}</td></tr><tr><th>Last attempt</th><td>{}</td></tr><tr><th>Drift</th><td>{drift}</td></tr></table>",
        e["commitApplied"].as_str().map_or(
            "<span class=\"muted\">none yet</span>".to_string(),
            |c| format!("<code>{}</code>", esc(short(c)))
        ),
        attempt(&e["lastAttempt"]),
    ));
    let failed = &e["failedCommit"];
    if !failed.is_null() {
        let commit = failed["commit"].as_str().unwrap_or_default();
        out.push_str(&format!(
            "<p class=\"bad\" id=\"failed-commit\">Commit <code>{}</code> {} and waits for a new commit or a retry.</p>",
            esc(short(commit)),
            if failed["outcome"] == "invalid" { "does not load" } else { "failed (rolled back)" }
        ));
        if let Some(err) = failed["error"].as_str() {
            out.push_str(&format!("<pre>{}</pre>", esc(err)));
        }
        if e["retryPending"] == true {
            out.push_str("<p class=\"warn\">A retry is queued.</p>");
        } else if token.may(Right::Promote) {
            out.push_str(&format!(
                "<form method=\"post\" action=\"/env/{}/gitops/retry\" id=\"retry\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Retry commit {}</button></form>",
                esc(env),
                form_token(cookie),
                esc(short(commit))
            ));
        } else {
            out.push_str(
                "<p class=\"muted\">A token with the <code>promote</code> right can retry it.</p>",
            );
        }
    }
    out.push_str("</section>");
    out
}

/// The scheduled rehearsals of `env` (nothing without a schedule).
fn schedule_section(daemon: &Shared, token: &Resolved, env: &str) -> String {
    let entries = match api::rehearsals_view(daemon, token, jiff::Timestamp::now()) {
        Ok(Some(v)) => v,
        Ok(None) => return String::new(),
        Err(e) => {
            return format!(
                "<h2>Scheduled rehearsals</h2><section id=\"schedule\"><p class=\"bad\">{}</p></section>",
                esc(&e.message)
            );
        }
    };
    let mine: Vec<&Value> = entries.iter().filter(|e| e["environment"] == env).collect();
    let mut out = String::from("<h2>Scheduled rehearsals</h2><section id=\"schedule\">");
    if mine.is_empty() {
        out.push_str(
            "<p class=\"muted\">No scheduled rehearsal for this environment.</p></section>",
        );
        return out;
    }
    out.push_str("<table><tr><th>Schedule</th><th>Playbook</th><th>Next due</th><th>Last result</th><th>Missed</th></tr>");
    for e in mine {
        let last = &e["last"];
        let result = if last.is_null() {
            "<span class=\"muted\">none yet</span>".to_string()
        } else {
            let r = tag(&last["result"]);
            let class = if r == "missed" {
                "warn"
            } else {
                outcome_class(&r)
            };
            let run = last["run"].as_str().map_or(String::new(), |run| {
                format!(
                    ", run <a href=\"/env/{}/runs/{}/report\"><code>{}</code></a>",
                    esc(env),
                    esc(run),
                    esc(run)
                )
            });
            format!(
                "<span class=\"{class}\">{}</span>, due {}{run}",
                esc(&r),
                text(&last["due"])
            )
        };
        let missed = e["missed"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "<tr><td><code>{}</code> {}</td><td>{}</td><td>{}</td><td>{result}</td><td class=\"{}\">{missed}</td></tr>",
            text(&e["schedule"]),
            text(&e["tz"]),
            e["playbook"].as_str().map_or("default".into(), esc),
            text(&e["nextDue"]),
            if missed > 0 { "warn" } else { "muted" },
        ));
    }
    out.push_str("</table></section>");
    out
}

/// `POST /env/{env}/gitops/retry`: the Retry button of the environment page.
async fn retry(
    State(daemon): State<Shared>,
    headers: HeaderMap,
    Path(env): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let here = format!("/env/{env}");
    let token = match session(&daemon, &headers, &here) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let forbidden = |m: &str| error_page(ApiError::new(StatusCode::FORBIDDEN, m));
    if !same_origin(&headers) {
        tracing::warn!(token = %token.name, environment = %env, "dashboard form from another origin refused");
        return forbidden("refused: this form is accepted only from the dashboard's own pages");
    }
    let sent = String::from_utf8_lossy(&body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("csrf=").map(String::from))
        .unwrap_or_default();
    let expected = form_token(cookie_value(&headers).unwrap_or_default());
    let digest = |v: &str| -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(v.as_bytes()).into()
    };
    if !super::auth::constant_time_eq(&digest(&sent), &digest(&expected)) {
        return forbidden(
            "refused: the form token is missing or stale; reload the page and try again",
        );
    }
    if let Err(e) = api::environment(&daemon, &token, &env, Right::Promote) {
        return error_page(e);
    }
    match api::request_retry(&daemon, &env, &format!("dashboard:{}", token.name)) {
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("{here}?retry=queued"))],
        )
            .into_response(),
        Err(e) => error_page(e),
    }
}

async fn report_page(
    State(daemon): State<Shared>,
    headers: HeaderMap,
    Path((env, run)): Path<(String, String)>,
) -> Response {
    let token = match session(&daemon, &headers, &format!("/env/{env}/runs/{run}/report")) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if let Err(e) = api::environment(&daemon, &token, &env, Right::Read) {
        return error_page(e);
    }
    match api::render_report(&daemon, &env, &run, "html") {
        Ok((content_type, html)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => error_page(e),
    }
}
