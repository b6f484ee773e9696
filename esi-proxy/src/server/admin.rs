//! The admin endpoints under `/_esi/`: health, Prometheus metrics, purge by URL or prefix, and
//! the page-build waterfall of `/_esi/debug/<path>`, with the admin-token checks that guard
//! them. Proxies nothing itself: the waterfall's page is built through the proxy path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use crate::cache::SharedHealth;
use crate::compose::Trace;
use crate::fetch::BreakerState;
use crate::telemetry::Metrics;

use super::body::{full, with_type, Body};
use super::error::Error;
use super::proxy::{forward, Outgoing};
use super::state::Runtime;
use super::waterfall::PageReport;
use super::{AppState, ReloadStatus};

/// The body of `GET /_esi/health`: public, it says only that the server answers and whether
/// the last reload failed.
#[derive(Debug, Serialize)]
struct Health {
    /// Always "ok": the server answers.
    status: &'static str,
    /// "ok", or "failed" while the last reload's error stands.
    last_reload: &'static str,
}

/// The body of `GET /_esi/health?detail`, for admins.
#[derive(Debug, Serialize)]
struct HealthDetail<'a> {
    /// Always "ok": the server answers.
    status: &'static str,
    uptime_seconds: u64,
    /// The origin in force.
    origin: String,
    config: HealthConfig<'a>,
    /// Fragment hosts whose circuit breaker is not closed: fetches to them fail at once.
    breakers: Vec<BreakerReport>,
    /// The shared cache tier; absent when none is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_cache: Option<SharedHealth>,
}

/// A fragment host's circuit breaker in `/_esi/health?detail`.
#[derive(Debug, Serialize)]
struct BreakerReport {
    /// `host:port`.
    host: String,
    /// "open" or "half-open".
    state: BreakerState,
}

/// The reload part of `/_esi/health?detail`.
#[derive(Debug, Serialize)]
struct HealthConfig<'a> {
    /// Configs applied since start.
    generation: u64,
    /// "ok", or "failed" while the last reload's error stands.
    last_reload: &'static str,
    /// That error, naming file, line and field; `null` after a success.
    error: Option<&'a str>,
}

/// The body of `POST /_esi/purge`: the target, under the name it was given as.
#[derive(Debug, Serialize)]
struct Purged<'a> {
    purged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<&'a str>,
    /// The shared tier's part, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_cache: Option<SharedPurged>,
}

/// The shared tier's part of a purge: removed there and announced to every node, or not.
#[derive(Debug, Serialize)]
struct SharedPurged {
    /// `announced`, or `failed` (Redis did not answer: other nodes may keep their copies).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
}

/// Serves one request under `/_esi/`.
pub(super) async fn serve(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Error> {
    let rt = state.runtime();
    match (req.method().clone(), req.uri().path()) {
        (Method::GET | Method::HEAD, "/_esi/health") => {
            let reload = state.reload_status();
            let detail = req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "detail" || p.starts_with("detail="))
            });
            if !detail {
                return Ok(json(&Health {
                    status: "ok",
                    last_reload: reload.outcome(),
                }));
            }
            authorize(&rt, &req, remote)?;
            let mut health = HealthDetail::new(
                state.started.elapsed().as_secs(),
                rt.origin.to_string(),
                &reload,
            );
            health.breakers = state
                .breakers
                .states()
                .into_iter()
                .filter(|(_, state)| *state != BreakerState::Closed)
                .map(|(host, state)| BreakerReport { host, state })
                .collect();
            health.shared_cache = state.shared.as_ref().map(|tier| tier.health());
            Ok(json(&health))
        }
        (Method::GET | Method::HEAD, "/_esi/metrics") => {
            authorize(&rt, &req, remote)?;
            state.fragment_cache.publish_metrics();
            state.layout_cache.publish_metrics();
            state.breakers.publish_metrics();
            if let Some(tier) = &state.shared {
                tier.publish_metrics();
            }
            publish_runtime(&state.metrics);
            Ok(with_type(
                full(state.metrics.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            ))
        }
        (Method::GET, path) if path.starts_with("/_esi/debug/") => {
            debug_page(state, req, remote).await
        }
        (Method::POST, "/_esi/purge") => {
            authorize(&rt, &req, remote)?;
            purge(state, &rt, &req).await
        }
        (_, "/_esi/health" | "/_esi/metrics" | "/_esi/purge") => Err(Error::Refused(
            "method not allowed on this endpoint",
            StatusCode::METHOD_NOT_ALLOWED,
        )),
        _ => Err(Error::NotFound),
    }
}

/// `POST /_esi/purge?url=U` drops every cached variant of `U`; `?prefix=P` drops every entry
/// whose URL starts with `P`. A relative `U`/`P` is taken on the origin. Both caches, and the
/// shared tier when configured: there the keys are removed and every node is told to drop
/// its in-process copies.
async fn purge(
    state: &AppState,
    rt: &Runtime,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let one_target = || {
        Error::Refused(
            "purge takes exactly one of url= or prefix=",
            StatusCode::BAD_REQUEST,
        )
    };
    let invalid = || Error::Refused("purge target is not a valid URL", StatusCode::BAD_REQUEST);
    let query = req.uri().query().unwrap_or("");
    let mut target = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "url" | "prefix" if target.is_none() => {
                target = Some((key.into_owned(), value.into_owned()))
            }
            _ => return Err(one_target()),
        }
    }
    let Some((kind, value)) = target else {
        return Err(one_target());
    };
    let absolute = if value.starts_with('/') {
        rt.origin_url
            .join(&value)
            .map(|u| u.to_string())
            .map_err(|_| invalid())?
    } else {
        url::Url::parse(&value)
            .map(|u| {
                if kind == "prefix" {
                    value.clone()
                } else {
                    u.to_string()
                }
            })
            .map_err(|_| invalid())?
    };
    if kind == "url" {
        state.fragment_cache.purge_url(&absolute);
        state.layout_cache.purge_url(&absolute);
    } else {
        state.fragment_cache.purge_prefix(&absolute);
        state.layout_cache.purge_prefix(&absolute);
    }
    state.metrics.inc_counter(
        "esi_proxy_cache_purges_total",
        "Purge requests, by kind.",
        Some(("kind", &kind)),
        1,
    );
    tracing::info!(%kind, target = %absolute, "cache purged");
    let shared_cache = match &state.shared {
        Some(tier) => {
            let result = if kind == "url" {
                tier.purge_url(&absolute).await
            } else {
                tier.purge_prefix(&absolute).await
            };
            Some(match result {
                Ok(done) => SharedPurged {
                    status: "announced",
                    removed: Some(done.removed),
                    generation: Some(done.generation),
                },
                Err(error) => {
                    tracing::warn!(%kind, target = %absolute, %error, "shared cache not purged");
                    SharedPurged {
                        status: "failed",
                        removed: None,
                        generation: None,
                    }
                }
            })
        }
        None => None,
    };
    let target = Some(absolute.as_str());
    Ok(json(&Purged {
        purged: true,
        url: target.filter(|_| kind == "url"),
        prefix: target.filter(|_| kind == "prefix"),
        shared_cache,
    }))
}

/// `GET /_esi/debug/<path>[?query][&format=json]` composes `<path>` as the client would get
/// it (with the client's cookies), records every fetch, and answers with the page-build
/// waterfall: HTML by default, JSON with `format=json`.
async fn debug_page(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Error> {
    let rt = state.runtime();
    authorize(&rt, &req, remote)?;
    let path = req.uri().path()["/_esi/debug".len()..].to_owned();
    let mut json = false;
    // The page's query exactly as sent, less the waterfall's own `format` parameter: the page
    // composed is the one the visitor asks for, byte for byte.
    let kept: Vec<&str> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let ours = *pair == "format" || pair.starts_with("format=");
            if ours {
                json = pair.strip_prefix("format=") == Some("json");
            }
            !ours && !pair.is_empty()
        })
        .collect();
    let target = if kept.is_empty() {
        path
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut req = req;
    // The admin token was for this endpoint; the page is composed as the visitor gets it.
    consume_admin_token(&rt, req.headers_mut());
    let mut out = Outgoing::new(req, remote, &rt.settings.server, &state.metrics)?;
    out.method = Method::GET;
    out.path_and_query.clone_from(&target);
    out.body = crate::fetch::OriginBody::default();
    let trace = Arc::new(Trace::default());
    let started = Instant::now();
    let (route, result) = forward(state, out, started, Some(Arc::clone(&trace)), None).await;
    let ms = || started.elapsed().as_secs_f64() * 1000.0;
    let (status, body, mut error) = match result {
        Ok(response) => (response.status(), Some(response.into_body()), None),
        Err(e) => (e.status(), None, Some(e.to_string())),
    };
    let (mut first, mut bytes) = (None, 0usize);
    if let Some(mut body) = body {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        first.get_or_insert_with(ms);
                        bytes += data.len();
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    let mut report = PageReport::new(target, status.as_u16(), route == "esi", &trace);
    report.finish(first, ms(), bytes, error);
    if json {
        Ok(with_type(full(report.to_json()), "application/json"))
    } else {
        Ok(with_type(
            full(report.to_html()),
            "text/html; charset=utf-8",
        ))
    }
}

/// A JSON response: `value` on one line.
/// The runtime's own figures, read when metrics are scraped: tasks alive (one per open client
/// or pooled upstream connection, per spawned include or refresh), so a leak shows as a climb
/// that does not come back down after load.
fn publish_runtime(metrics: &Metrics) {
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    metrics.set_gauge(
        "esi_proxy_runtime_tasks",
        "Tokio tasks alive in the process.",
        tasks as f64,
    );
}

fn json(value: &impl Serialize) -> Response<Body> {
    let mut body =
        serde_json::to_vec(value).expect("structs of strings and numbers always serialize");
    body.push(b'\n');
    with_type(full(body), "application/json")
}

// === impl Health ===

impl<'a> HealthDetail<'a> {
    fn new(uptime_seconds: u64, origin: String, reload: &'a ReloadStatus) -> Self {
        HealthDetail {
            status: "ok",
            uptime_seconds,
            origin,
            config: HealthConfig {
                generation: reload.generation,
                last_reload: reload.outcome(),
                error: reload.last_error.as_deref(),
            },
            breakers: Vec::new(),
            shared_cache: None,
        }
    }
}

/// Admin endpoints that reveal or change state need `Authorization: Bearer <admin_token>`, or
/// a loopback client when `server.admin_from_loopback` opts in.
fn authorize(rt: &Runtime, req: &Request<Incoming>, remote: SocketAddr) -> Result<(), Error> {
    if rt.settings.server.admin_from_loopback && remote.ip().is_loopback() {
        return Ok(());
    }
    authorize_token(rt, req)
}

/// Removes `Authorization` when it carries the admin token: the proxy consumes it, and no
/// origin or fragment host ever sees it.
pub(super) fn consume_admin_token(rt: &Runtime, headers: &mut http::HeaderMap) {
    let Some(token) = &rt.settings.server.admin_token else {
        return;
    };
    let admin = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .any(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()));
    if admin {
        headers.remove(header::AUTHORIZATION);
    }
}

/// Requires `Authorization: Bearer <admin_token>`; with no token configured, nobody has it.
fn authorize_token(rt: &Runtime, req: &Request<Incoming>) -> Result<(), Error> {
    let Some(token) = &rt.settings.server.admin_token else {
        return Err(Error::Unauthorized);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_health_says_only_ok_or_failed() {
        let failed = ReloadStatus {
            generation: 3,
            last_error: Some("a.toml:2: bad".into()),
        };
        for (reload, want) in [
            (
                ReloadStatus::default(),
                r#"{"status":"ok","last_reload":"ok"}"#,
            ),
            (failed, r#"{"status":"ok","last_reload":"failed"}"#),
        ] {
            let health = Health {
                status: "ok",
                last_reload: reload.outcome(),
            };
            assert_eq!(serde_json::to_string(&health).expect("serializes"), want);
        }
    }

    #[test]
    fn health_detail_json_keeps_its_fields_and_order() {
        let ok = ReloadStatus::default();
        let failed = ReloadStatus {
            generation: 3,
            last_error: Some("a.toml:2: \"x\" \\ bad\nnext".into()),
        };
        let cases = [
            (
                &ok,
                r#"{"status":"ok","uptime_seconds":7,"origin":"http://o.test:81/","config":{"generation":0,"last_reload":"ok","error":null},"breakers":[]}"#,
            ),
            (
                &failed,
                r#"{"status":"ok","uptime_seconds":7,"origin":"http://o.test:81/","config":{"generation":3,"last_reload":"failed","error":"a.toml:2: \"x\" \\ bad\nnext"},"breakers":[]}"#,
            ),
        ];
        for (reload, want) in cases {
            let health = HealthDetail::new(7, "http://o.test:81/".into(), reload);
            let got = serde_json::to_string(&health).expect("serializes");
            assert_eq!(got, want, "{reload:?}");
        }
    }

    #[test]
    fn purge_json_names_the_target_as_given() {
        let cases = [
            ("url", r#"{"purged":true,"url":"http://o.test/a"}"#),
            ("prefix", r#"{"purged":true,"prefix":"http://o.test/a"}"#),
        ];
        for (kind, want) in cases {
            let target = Some("http://o.test/a");
            let purged = Purged {
                purged: true,
                url: target.filter(|_| kind == "url"),
                prefix: target.filter(|_| kind == "prefix"),
                shared_cache: None,
            };
            assert_eq!(serde_json::to_string(&purged).expect("serializes"), want);
        }
    }
}
