//! The demo's fragment services and gateway on hyper: the knobs each request goes through
//! (down, latency, jitter, errors, TTL) and the gateway's cookie actions. Bodies are rendered
//! once at start; a request renders nothing and never calls out. Which service serves what is
//! in `registry`; the accept loop is the crate's `server`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LINK, LOCATION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::config::{ServiceConfig, MAX_LATENCY_MS};
use super::registry::GATEWAY;
use crate::server::Respond;
use crate::Rng;

/// A service's knobs as they are now, changed at runtime through `DemoHandle`.
#[derive(Debug)]
pub(crate) struct Control {
    down: AtomicBool,
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    /// The error rate in parts per million, so it fits an atomic.
    error_ppm: AtomicU32,
    max_age_s: AtomicU64,
    /// Jitter and error draws; seeded, so a run repeats when requests arrive in the same order.
    rng: Mutex<Rng>,
}

/// One body a server answers with.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub body: Bytes,
    pub esi: bool,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// A `Link` header value: the preload hints a fragment sends for the proxy to put in the
    /// page's head (and its 103 Early Hints).
    pub link: Option<String>,
    /// Its `Surrogate-Key` value, if it has one.
    pub keys: Option<HeaderValue>,
}

/// What one listener serves: a fragment service's pages, or the gateway's layout and actions.
#[derive(Debug)]
pub(crate) struct Site {
    pub name: &'static str,
    /// By path.
    pub pages: HashMap<String, Page>,
    pub control: Arc<Control>,
    /// The product fragment, when this service serves it: the page's primary include.
    pub product: Option<ProductFragment>,
}

/// The fragment that knows whether the page's product exists: at `path`, an `id` query
/// parameter naming another product than `sku` answers 404 (an empty or absent one is `sku`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProductFragment {
    pub path: &'static str,
    pub sku: &'static str,
}

const PPM: f64 = 1_000_000.0;

// === impl Control ===

impl Control {
    pub(crate) fn new(knobs: ServiceConfig, seed: u64) -> Self {
        let control = Self {
            down: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            jitter_ms: AtomicU64::new(0),
            error_ppm: AtomicU32::new(0),
            max_age_s: AtomicU64::new(0),
            rng: Mutex::new(Rng::new(seed)),
        };
        control.set(knobs);
        control
    }

    /// The knobs as they are now.
    pub(crate) fn get(&self) -> ServiceConfig {
        ServiceConfig {
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            jitter_ms: self.jitter_ms.load(Ordering::Relaxed),
            error_rate: f64::from(self.error_ppm.load(Ordering::Relaxed)) / PPM,
            down: self.down.load(Ordering::Relaxed),
            max_age_s: self.max_age_s.load(Ordering::Relaxed),
        }
    }

    /// Sets every knob, latency and jitter capped at [`MAX_LATENCY_MS`], the error rate
    /// clamped to `0.0..=1.0` (NaN: 0).
    pub(crate) fn set(&self, knobs: ServiceConfig) {
        self.set_down(knobs.down);
        self.set_latency(knobs.latency_ms);
        self.set_jitter(knobs.jitter_ms);
        self.set_error_rate(knobs.error_rate);
        self.set_max_age(knobs.max_age_s);
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    pub(crate) fn set_latency(&self, ms: u64) {
        self.latency_ms
            .store(ms.min(MAX_LATENCY_MS), Ordering::Relaxed);
    }

    pub(crate) fn set_jitter(&self, ms: u64) {
        self.jitter_ms
            .store(ms.min(MAX_LATENCY_MS), Ordering::Relaxed);
    }

    pub(crate) fn set_error_rate(&self, rate: f64) {
        self.error_ppm.store(ppm(rate), Ordering::Relaxed);
    }

    pub(crate) fn set_max_age(&self, s: u64) {
        self.max_age_s.store(s, Ordering::Relaxed);
    }

    /// This request's delay in ms and whether it fails, drawn for `knobs`.
    fn draw(&self, knobs: &ServiceConfig) -> (u64, bool) {
        // The draws are whole, so a panic elsewhere cannot leave the generator inconsistent.
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let jitter = match knobs.jitter_ms {
            0 => 0,
            j => rng.below(j + 1),
        };
        let fails = match ppm(knobs.error_rate) {
            0 => false,
            p => rng.below(PPM as u64) < u64::from(p),
        };
        (knobs.latency_ms + jitter, fails)
    }
}

/// A rate in `0.0..=1.0` as parts per million (NaN reads as 0).
fn ppm(rate: f64) -> u32 {
    if rate.is_nan() {
        return 0;
    }
    // In 0..=1_000_000 after the clamp, so the cast is exact enough and cannot wrap.
    (rate.clamp(0.0, 1.0) * PPM).round() as u32
}

// === impl Site ===

impl Respond for Site {
    /// Answers one request: knobs first (down, delay, error), then the page or action.
    async fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return self.plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        }
        let mut knobs = self.control.get();
        if let Err(problem) = query_knobs(req.uri().query().unwrap_or(""), &mut knobs) {
            return self.plain(StatusCode::BAD_REQUEST, &problem);
        }
        if knobs.down {
            let mut response = self.plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{} is down", self.name),
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("5"));
            return response;
        }
        let (delay_ms, fails) = self.control.draw(&knobs);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if fails {
            return self.plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "{}: internal error (error_rate {})",
                    self.name, knobs.error_rate
                ),
            );
        }
        if self.name == GATEWAY {
            if let Some(response) = gateway_action(req) {
                return response;
            }
        }
        if let Some(product) = &self.product {
            let id = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix("id="))
                .unwrap_or("");
            if req.uri().path() == product.path && !id.is_empty() && id != product.sku {
                return self.plain(StatusCode::NOT_FOUND, "no such product");
            }
        }
        match self.pages.get(req.uri().path()) {
            Some(page) => self.html(page, &knobs),
            None => self.plain(
                StatusCode::NOT_FOUND,
                &format!("{}: no such page", self.name),
            ),
        }
    }
}

impl Site {
    fn html(&self, page: &Page, knobs: &ServiceConfig) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(page.body.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
        if let Some(value) = page
            .link
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            headers.insert(LINK, value);
        }
        if let Ok(value) = HeaderValue::from_str(&knobs.cache_control()) {
            headers.insert(CACHE_CONTROL, value);
        }
        if page.esi {
            headers.insert(
                "surrogate-control",
                HeaderValue::from_static("content=\"ESI/1.0\""),
            );
        }
        if let Some(keys) = &page.keys {
            headers.insert("surrogate-key", keys.clone());
        }
        headers.insert("x-demo-service", HeaderValue::from_static(self.name));
        response
    }

    /// A short HTML message for errors (never cached, never ESI).
    fn plain(&self, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
        let body = format!(
            "<p class=\"demo-error\">{}</p>\n",
            message.replace('&', "&amp;").replace('<', "&lt;")
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("x-demo-service", HeaderValue::from_static(self.name));
        response
    }
}

/// Applies the knobs a request's query sets (`latency_ms`, `jitter_ms`, `error_rate`, `down`,
/// `max_age_s`); other parameters are ignored, as a service ignores a cache buster.
fn query_knobs(query: &str, knobs: &mut ServiceConfig) -> Result<(), String> {
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let bad = || format!("{key}: {value:?} is not a valid value");
        let ms = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms <= MAX_LATENCY_MS)
                .ok_or_else(bad)
        };
        match key {
            "latency_ms" => knobs.latency_ms = ms()?,
            "jitter_ms" => knobs.jitter_ms = ms()?,
            "error_rate" => {
                knobs.error_rate = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(bad)?;
            }
            "down" => {
                knobs.down = match value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(bad()),
                }
            }
            "max_age_s" => knobs.max_age_s = value.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(())
}

/// The gateway's actions, for trying the page's personalisation: `/login?user=Ann` and
/// `/logout` set and clear the `user` cookie, `/cart/add` counts up the `cart` cookie; each
/// redirects to `/`. `None` for any other path.
fn gateway_action(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let cookies: Vec<String> = match req.uri().path() {
        "/login" => {
            let user = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix("user="))
                .filter(|u| {
                    (1..=24).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric())
                });
            match user {
                Some(user) => vec![format!("user={user}; Path=/; SameSite=Lax")],
                None => {
                    let mut response = Response::new(Full::new(Bytes::from_static(
                        b"user: 1 to 24 letters or digits\n",
                    )));
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    return Some(response);
                }
            }
        }
        "/logout" => vec![
            "user=; Path=/; Max-Age=0".to_string(),
            "cart=; Path=/; Max-Age=0".to_string(),
        ],
        "/cart/add" => {
            let count = cookie(req, "cart")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0);
            vec![format!(
                "cart={}; Path=/; SameSite=Lax",
                (count + 1).min(99)
            )]
        }
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("/"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for value in cookies {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(SET_COOKIE, value);
        }
    }
    Some(response)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_knobs_override_and_refuse_bad_values() {
        let mut knobs = ServiceConfig::default();
        query_knobs(
            "v=3&latency_ms=40&jitter_ms=0&error_rate=0.5&down=true&max_age_s=0",
            &mut knobs,
        )
        .expect("valid");
        assert_eq!(
            knobs,
            ServiceConfig {
                latency_ms: 40,
                jitter_ms: 0,
                error_rate: 0.5,
                down: true,
                max_age_s: 0
            }
        );
        for bad in [
            "latency_ms=x",
            "latency_ms=60001",
            "jitter_ms=-1",
            "error_rate=1.5",
            "error_rate=NaN",
            "down=yes",
            "max_age_s=1.5",
        ] {
            assert!(query_knobs(bad, &mut knobs).is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_respect_the_rate_and_the_jitter_bound() {
        let control = Control::new(ServiceConfig::default(), 42);
        let mut knobs = ServiceConfig {
            latency_ms: 10,
            jitter_ms: 5,
            error_rate: 0.0,
            ..ServiceConfig::default()
        };
        for _ in 0..200 {
            let (ms, fails) = control.draw(&knobs);
            assert!((10..=15).contains(&ms) && !fails, "{ms} {fails}");
        }
        knobs.error_rate = 1.0;
        assert!((0..200).all(|_| control.draw(&knobs).1));
        knobs.error_rate = 0.25;
        let failures = (0..4000).filter(|_| control.draw(&knobs).1).count();
        assert!((700..1300).contains(&failures), "{failures} of 4000");
        // Seeded: a second control with the same seed draws the same sequence.
        let (a, b) = (Control::new(knobs, 9), Control::new(knobs, 9));
        let seq = |c: &Control| (0..50).map(|_| c.draw(&knobs)).collect::<Vec<_>>();
        assert_eq!(seq(&a), seq(&b));
    }

    #[test]
    fn controls_clamp_what_they_are_given() {
        let control = Control::new(ServiceConfig::default(), 1);
        control.set_latency(u64::MAX);
        control.set_error_rate(7.0);
        assert_eq!(control.get().latency_ms, MAX_LATENCY_MS);
        assert_eq!(control.get().error_rate, 1.0);
        control.set_error_rate(f64::NAN);
        assert_eq!(control.get().error_rate, 0.0);
        control.set_error_rate(0.125);
        assert_eq!(control.get().error_rate, 0.125);
    }
}
