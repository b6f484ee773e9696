//! The demo's knobs: per-service latency, jitter, error rate, down switch and Cache-Control TTL,
//! as a serde TOML schema with the defaults embedded (`config/demo.toml` documents them).
//! Pure: parsing and validation only; the running services hold their knobs in `Control`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::Deserializer;
use serde::Deserialize;

use super::registry::{GATEWAY, SERVICES};

/// The longest latency or jitter a knob may ask for, in ms: a bound, so a typo cannot park
/// every connection for hours.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// The demo's configuration: a seed, the knobs every service starts from, and per-service
/// overrides.
///
/// ```toml
/// seed = 1
/// [defaults]
/// latency_ms = 8
/// [services.reviews]
/// latency_ms = 400   # the other fields keep their embedded values
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Seed of every service's random draws (jitter, errors): equal seeds give equal runs.
    /// Default: 1.
    pub seed: u64,
    /// The knobs of a service before its override applies. Default: [`ServiceConfig::default`].
    pub defaults: ServiceConfig,
    /// Overrides by service name (`gateway` for the gateway). A file's entries are merged field
    /// by field over the embedded ones, so one line changes one knob of one service.
    /// Default: realistic latencies and TTLs per service (see `config/demo.toml`).
    #[serde(deserialize_with = "merge_services")]
    pub services: BTreeMap<String, ServiceOverride>,
}

/// The knobs of one service.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Time before every answer, in ms (at most [`MAX_LATENCY_MS`]). Default: 8.
    pub latency_ms: u64,
    /// Extra time drawn in `0..=jitter_ms` per request, in ms (at most [`MAX_LATENCY_MS`]).
    /// Default: 6.
    pub jitter_ms: u64,
    /// Share of requests answered `500 Internal Server Error`, in `0.0..=1.0`. Default: 0.0.
    pub error_rate: f64,
    /// Whether the service refuses every request with `503 Service Unavailable`. Default: false.
    pub down: bool,
    /// `Cache-Control: public, max-age={max_age_s}` on success; 0 sends `no-store`.
    /// Default: 60.
    pub max_age_s: u64,
}

/// Knobs that replace a service's [`ServiceConfig`] fields; `None` keeps the default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverride {
    /// See [`ServiceConfig::latency_ms`].
    pub latency_ms: Option<u64>,
    /// See [`ServiceConfig::jitter_ms`].
    pub jitter_ms: Option<u64>,
    /// See [`ServiceConfig::error_rate`].
    pub error_rate: Option<f64>,
    /// See [`ServiceConfig::down`].
    pub down: Option<bool>,
    /// See [`ServiceConfig::max_age_s`].
    pub max_age_s: Option<u64>,
}

/// Why a demo config was refused.
#[derive(Debug, thiserror::Error)]
pub enum DemoConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML of the schema (the message names the line and field).
    #[error("{path}: {source}")]
    Toml {
        /// The file, or `<string>`.
        path: String,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// Every problem found by [`DemoConfig::validate`].
    #[error("demo config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The embedded overrides: (service, latency ms, jitter ms, max-age s). Fast, cacheable chrome;
/// slow, short-lived personal and stock data; recommendations slowest, as on a real shop.
const EMBEDDED: &[(&str, u64, u64, u64)] = &[
    (GATEWAY, 12, 4, 30),
    ("account", 15, 10, 300),
    ("ads", 50, 40, 0),
    ("analytics", 2, 2, 0),
    ("breadcrumbs", 6, 4, 600),
    ("cart", 20, 12, 300),
    ("catalog", 16, 8, 600),
    ("chat", 8, 6, 3600),
    ("compare", 6, 4, 3600),
    ("consent", 3, 2, 3600),
    ("delivery", 35, 25, 60),
    ("financing", 28, 12, 600),
    ("footer", 4, 2, 3600),
    ("gallery", 22, 14, 3600),
    ("header", 4, 2, 600),
    ("inventory", 30, 20, 5),
    ("locale", 3, 2, 3600),
    ("loyalty", 24, 12, 300),
    ("nav", 10, 6, 600),
    ("newsletter", 5, 3, 3600),
    ("pricing", 25, 15, 10),
    ("promotions", 18, 10, 120),
    ("qa", 45, 30, 300),
    ("ratings", 5, 3, 3600),
    ("recently-viewed", 35, 20, 60),
    ("recommendations", 80, 50, 120),
    ("reviews", 60, 40, 300),
    ("search", 6, 4, 3600),
    ("seller", 10, 5, 600),
    ("sharing", 3, 2, 3600),
    ("size-guide", 12, 6, 3600),
    ("static", 1, 0, 86400),
    ("stores", 40, 20, 60),
    ("tiles", 12, 8, 600),
    ("warranty", 18, 8, 600),
    ("wishlist", 14, 8, 60),
];

// === impl DemoConfig ===

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            defaults: ServiceConfig::default(),
            services: embedded_services(),
        }
    }
}

impl DemoConfig {
    /// Reads and validates a TOML file.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML of the schema (with line and field), or fails
    /// [`DemoConfig::validate`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DemoConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DemoConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// Not TOML of the schema (with line and field), or fails [`DemoConfig::validate`].
    pub fn from_toml(text: &str) -> Result<Self, DemoConfigError> {
        Self::parse(text, "<string>")
    }

    fn parse(text: &str, path: &str) -> Result<Self, DemoConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| DemoConfigError::Toml {
            path: path.to_string(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every name and knob.
    ///
    /// # Errors
    /// [`DemoConfigError::Invalid`] listing every problem: a service name the demo does not
    /// run, an error rate outside `0.0..=1.0`, a latency or jitter over [`MAX_LATENCY_MS`].
    pub fn validate(&self) -> Result<(), DemoConfigError> {
        let mut problems = Vec::new();
        self.defaults.check("defaults", &mut problems);
        for name in self.services.keys() {
            if !is_known(name) {
                problems.push(format!(
                    "services.{name}: no such service (known: {GATEWAY}, {})",
                    SERVICES
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else {
                self.service(name)
                    .check(&format!("services.{name}"), &mut problems);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DemoConfigError::Invalid(problems))
        }
    }

    /// This config with every latency and jitter at 0, the rest kept: for tests that compose
    /// the page and should not wait on the demo's realism.
    #[must_use]
    pub fn without_latency(mut self) -> Self {
        self.defaults.latency_ms = 0;
        self.defaults.jitter_ms = 0;
        for o in self.services.values_mut() {
            o.latency_ms = Some(0);
            o.jitter_ms = Some(0);
        }
        self
    }

    /// The knobs service `name` starts with: [`DemoConfig::defaults`] with its override applied.
    pub fn service(&self, name: &str) -> ServiceConfig {
        let mut knobs = self.defaults;
        if let Some(o) = self.services.get(name) {
            o.apply(&mut knobs);
        }
        knobs
    }
}

fn is_known(name: &str) -> bool {
    name == GATEWAY || SERVICES.iter().any(|s| s.name == name)
}

fn embedded_services() -> BTreeMap<String, ServiceOverride> {
    EMBEDDED
        .iter()
        .map(|&(name, latency, jitter, max_age)| {
            let o = ServiceOverride {
                latency_ms: Some(latency),
                jitter_ms: Some(jitter),
                max_age_s: Some(max_age),
                ..ServiceOverride::default()
            };
            (name.to_string(), o)
        })
        .collect()
}

/// The file's `[services.*]` tables merged field by field over the embedded ones.
fn merge_services<'de, D>(deserializer: D) -> Result<BTreeMap<String, ServiceOverride>, D::Error>
where
    D: Deserializer<'de>,
{
    let given = BTreeMap::<String, ServiceOverride>::deserialize(deserializer)?;
    let mut merged = embedded_services();
    for (name, o) in given {
        merged.entry(name).or_default().merge(o);
    }
    Ok(merged)
}

// === impl ServiceConfig ===

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            latency_ms: 8,
            jitter_ms: 6,
            error_rate: 0.0,
            down: false,
            max_age_s: 60,
        }
    }
}

impl ServiceConfig {
    /// The `Cache-Control` value a success carries.
    pub fn cache_control(&self) -> String {
        match self.max_age_s {
            0 => "no-store".to_string(),
            s => format!("public, max-age={s}"),
        }
    }

    fn check(&self, at: &str, problems: &mut Vec<String>) {
        if !(0.0..=1.0).contains(&self.error_rate) {
            problems.push(format!(
                "{at}.error_rate: {} is not in 0.0..=1.0",
                self.error_rate
            ));
        }
        for (field, ms) in [
            ("latency_ms", self.latency_ms),
            ("jitter_ms", self.jitter_ms),
        ] {
            if ms > MAX_LATENCY_MS {
                problems.push(format!("{at}.{field}: {ms} is over {MAX_LATENCY_MS}"));
            }
        }
    }
}

impl fmt::Display for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency {}±{} ms, error rate {}, {}, {}",
            self.latency_ms,
            self.jitter_ms,
            self.error_rate,
            if self.down { "down" } else { "up" },
            self.cache_control()
        )
    }
}

// === impl ServiceOverride ===

impl ServiceOverride {
    /// Writes the fields this override sets into `knobs`.
    pub fn apply(&self, knobs: &mut ServiceConfig) {
        if let Some(v) = self.latency_ms {
            knobs.latency_ms = v;
        }
        if let Some(v) = self.jitter_ms {
            knobs.jitter_ms = v;
        }
        if let Some(v) = self.error_rate {
            knobs.error_rate = v;
        }
        if let Some(v) = self.down {
            knobs.down = v;
        }
        if let Some(v) = self.max_age_s {
            knobs.max_age_s = v;
        }
    }

    /// Takes every field `other` sets.
    fn merge(&mut self, other: ServiceOverride) {
        self.latency_ms = other.latency_ms.or(self.latency_ms);
        self.jitter_ms = other.jitter_ms.or(self.jitter_ms);
        self.error_rate = other.error_rate.or(self.error_rate);
        self.down = other.down.or(self.down);
        self.max_age_s = other.max_age_s.or(self.max_age_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO_TOML: &str = include_str!("../../../config/demo.toml");

    #[test]
    fn config_file_documents_the_defaults() {
        let parsed = DemoConfig::from_toml(DEMO_TOML).expect("config/demo.toml parses");
        assert_eq!(parsed, DemoConfig::default());
        // Merging hides a missing entry, so check the file lists every service itself.
        let table: toml::Table = toml::from_str(DEMO_TOML).expect("toml");
        let listed: Vec<&String> = table["services"]
            .as_table()
            .expect("[services] is a table")
            .keys()
            .collect();
        let mut want: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        want.push(GATEWAY);
        want.sort_unstable();
        assert_eq!(listed, want);
        for (name, o) in &table["services"].as_table().expect("table").clone() {
            let o = o.as_table().expect("service table");
            for field in ["latency_ms", "jitter_ms", "max_age_s"] {
                assert!(o.contains_key(field), "services.{name}.{field} documented");
            }
        }
        for field in ["latency_ms", "jitter_ms", "error_rate", "down", "max_age_s"] {
            assert!(table["defaults"].get(field).is_some(), "defaults.{field}");
        }
    }

    #[test]
    fn embedded_overrides_name_real_services_once() {
        DemoConfig::default()
            .validate()
            .expect("defaults are valid");
        assert_eq!(embedded_services().len(), EMBEDDED.len());
        assert_eq!(
            EMBEDDED.len(),
            SERVICES.len() + 1,
            "every service and the gateway"
        );
    }

    #[test]
    fn a_file_changes_one_knob_and_keeps_the_rest() {
        let config = DemoConfig::from_toml(
            "seed = 7\n[defaults]\nerror_rate = 0.25\n[services.reviews]\nlatency_ms = 900\n",
        )
        .expect("valid");
        let embedded = DemoConfig::default();
        assert_eq!(config.seed, 7);
        let reviews = config.service("reviews");
        assert_eq!(reviews.latency_ms, 900);
        assert_eq!(reviews.jitter_ms, embedded.service("reviews").jitter_ms);
        assert_eq!(reviews.max_age_s, embedded.service("reviews").max_age_s);
        assert_eq!(reviews.error_rate, 0.25);
        assert_eq!(config.service("pricing").latency_ms, 25);
        assert_eq!(config.defaults.latency_ms, 8);
        assert_eq!(DemoConfig::from_toml("").expect("empty"), embedded);
    }

    #[test]
    fn bad_configs_are_refused_with_every_problem() {
        for (text, wants) in [
            ("sed = 1", &["unknown field `sed`"][..]),
            (
                "[services.reviews]\nlatency = 5",
                &["unknown field `latency`"],
            ),
            ("[defaults]\nerror_rate = \"x\"", &["error_rate"]),
            (
                "[services.reveiws]\ndown = true\n[services.pricing]\nerror_rate = 1.5",
                &[
                    "services.reveiws: no such service",
                    "services.pricing.error_rate: 1.5 is not in 0.0..=1.0",
                ],
            ),
            (
                "[defaults]\nlatency_ms = 60001\njitter_ms = 70000",
                &["defaults.latency_ms: 60001", "jitter_ms: 70000"],
            ),
            ("[defaults]\nerror_rate = -0.1", &["-0.1 is not in"]),
            ("[defaults]\nerror_rate = nan", &["NaN is not in"]),
        ] {
            let err = DemoConfig::from_toml(text).expect_err(text).to_string();
            for want in wants {
                assert!(err.contains(want), "{text:?}: {err}");
            }
        }
    }

    #[test]
    fn cache_control_follows_max_age() {
        let mut knobs = ServiceConfig::default();
        assert_eq!(knobs.cache_control(), "public, max-age=60");
        knobs.max_age_s = 0;
        assert_eq!(knobs.cache_control(), "no-store");
    }
}
