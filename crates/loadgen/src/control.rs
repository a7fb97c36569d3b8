//! The control port: the page, the stats, the mode switch.
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::State;
use crate::mode::Mode;

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/stats", get(stats))
        .route("/mode", get(mode))
        .route("/mode/{name}", post(set_mode))
        .with_state(state)
}

async fn stats(Shared(state): Shared<Arc<State>>) -> Response {
    let (mode, _) = state.mode();
    let snapshot = match state.stats.lock() {
        Ok(mut stats) => stats.snapshot(kit_core::time::now_millis()),
        Err(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": "stats unavailable" }))).into_response();
        }
    };
    Json(json!({ "mode": mode.name(), "target_journeys_per_sec": state.target_rate(), "stats": snapshot }))
        .into_response()
}

async fn mode(Shared(state): Shared<Arc<State>>) -> Json<serde_json::Value> {
    Json(json!({ "mode": state.mode().0.name() }))
}

async fn set_mode(Shared(state): Shared<Arc<State>>, Path(name): Path<String>) -> Response {
    match Mode::parse(&name) {
        Some(mode) => {
            state.set_mode(mode);
            Json(json!({ "mode": mode.name() })).into_response()
        }
        None => {
            let known: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
            let message = format!("no mode {name:?}; the modes are {}", known.join(", "));
            (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
        }
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shopfast loadgen</title>
<style>
 body { font: 15px system-ui, sans-serif; margin: 2rem; color: #222; }
 button { font: inherit; padding: .4rem 1rem; margin-right: .4rem; }
 button.on { background: #234; color: #fff; }
 table { border-collapse: collapse; margin-top: 1rem; }
 td, th { padding: .3rem .9rem; text-align: right; border-bottom: 1px solid #ddd; }
 th { text-align: left; font-weight: 600; }
</style></head>
<body>
<h1>shopfast loadgen</h1>
<p id="modes"></p>
<table id="numbers"></table>
<script>
const modes = ["steady", "burst", "overload", "flood", "pause"];
async function setMode(m) { await fetch("/mode/" + m, { method: "POST" }); refresh(); }
function row(name, value) { return `<tr><th>${name}</th><td>${value}</td></tr>`; }
async function refresh() {
  const r = await fetch("/stats"); const s = await r.json(); const w = s.stats.window;
  document.getElementById("modes").innerHTML = modes.map(m =>
    `<button class="${m === s.mode ? "on" : ""}" onclick="setMode('${m}')">${m}</button>`).join("");
  document.getElementById("numbers").innerHTML =
    row("target journeys/s", s.target_journeys_per_sec.toFixed(1)) +
    row(`requests/s (last ${s.stats.window_secs} s)`, s.stats.rps.toFixed(1)) +
    row("success", w.success) + row("4xx", w.client_error) + row("429", w.rate_limited) +
    row("5xx", w.server_error) + row("no answer", w.failed) +
    row("p50 / p95 / p99 ms", [s.stats.p50_ms, s.stats.p95_ms, s.stats.p99_ms].map(v => v.toFixed(1)).join(" / ")) +
    row("journeys started / skipped", s.stats.journeys_started + " / " + s.stats.journeys_skipped);
}
refresh(); setInterval(refresh, 1000);
</script>
</body></html>
"#;
