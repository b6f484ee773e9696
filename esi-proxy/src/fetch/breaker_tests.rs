use std::path::Path;

use bytes::Bytes;
use http::StatusCode;

use super::*;
use crate::config::Config;
use crate::fetch::ErrorKind;

/// Origin `http://o.test:80`; `a.test:81` with its own breaker (3 failures, 1 s, at most 4 s),
/// `b.test:82` with breakers off.
const CONFIG: &str = "[server]\norigin = \"http://o.test\"\n\
    [fetch.breaker]\nfailures = 2\nopen_ms = 100\nmax_open_ms = 250\n\
    [[fetch.hosts]]\nurl = \"http://a.test:81\"\n\
    breaker = { failures = 3, open_ms = 1000, max_open_ms = 4000 }\n\
    [[fetch.hosts]]\nurl = \"http://b.test:82\"\nbreaker = { enabled = false }\n";

/// The deadline of the fetches in these tests.
const SECOND: Duration = Duration::from_secs(1);

/// A clock the test moves by hand.
struct Hand {
    now: Arc<Mutex<Instant>>,
}

impl Hand {
    fn new() -> Self {
        Self {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }

    fn clock(&self) -> Clock {
        let now = Arc::clone(&self.now);
        Arc::new(move || *lock(&now))
    }

    fn advance(&self, by: Duration) {
        *lock(&self.now) += by;
    }
}

fn settings(text: &str) -> Settings {
    Config::parse(text, Path::new("t.toml"))
        .expect("test config parses")
        .settings()
        .expect("test config is valid")
}

fn breakers(hand: &Hand) -> (Breakers, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let breakers = Breakers::with_clock(&settings(CONFIG), Arc::clone(&metrics), hand.clock());
    (breakers, metrics)
}

fn url(text: &str) -> Url {
    Url::parse(text).expect("test URLs parse")
}

fn ok() -> Result<Fragment, FetchError> {
    Ok(Fragment {
        status: StatusCode::OK,
        headers: Arc::default(),
        body: Bytes::from_static(b"ok"),
        cache: None,
        template: None,
    })
}

fn timeout() -> Result<Fragment, FetchError> {
    Err(FetchError::Timeout {
        url: "u".into(),
        after: Duration::from_secs(1),
    })
}

fn status(code: u16) -> Result<Fragment, FetchError> {
    Err(FetchError::Status {
        url: "u".into(),
        status: StatusCode::from_u16(code).expect("valid status"),
    })
}

/// Admits a fetch of `u` and settles it with `result`; `Err` when the breaker refused it.
fn fetch(b: &Breakers, u: &str, result: Result<Fragment, FetchError>) -> Result<(), FetchError> {
    let ticket = b.admit(&url(u), SECOND)?;
    let _ = ticket.settle(result);
    Ok(())
}

fn state_of(b: &Breakers, host: &str) -> Option<BreakerState> {
    b.states()
        .into_iter()
        .find(|(h, _)| h == host)
        .map(|(_, s)| s)
}

#[test]
fn failures_in_a_row_open_and_a_success_resets_the_count() {
    let hand = Hand::new();
    let (b, metrics) = breakers(&hand);
    let o = "http://o.test/f";
    fetch(&b, o, timeout()).expect("closed");
    fetch(&b, o, ok()).expect("closed");
    fetch(&b, o, timeout()).expect("closed: the success reset the count");
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Closed));
    fetch(&b, "http://o.test:80/other", status(503)).expect("closed");
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
    let err = fetch(&b, o, ok()).expect_err("open");
    assert_eq!(err.kind(), ErrorKind::BreakerOpen);
    let FetchError::BreakerOpen { host, retry_in, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(host, "o.test:80");
    assert_eq!(*retry_in, Some(Duration::from_millis(100)));
    assert!(err.to_string().contains("breaker open"), "{err}");
    assert!(metrics
        .render()
        .contains("esi_proxy_breaker_opens_total{host=\"o.test:80\"} 1"));
}

#[test]
fn what_counts_as_a_failure() {
    let refused = || {
        Err(FetchError::Refused {
            url: "u".into(),
            reason: "r".into(),
        })
    };
    let too_large = || {
        Err(FetchError::TooLarge {
            url: "u".into(),
            limit: 1,
        })
    };
    let connect = || {
        Err(FetchError::Connect {
            url: "u".into(),
            message: "m".into(),
        })
    };
    let truncated = || {
        Err(FetchError::Truncated {
            url: "u".into(),
            message: "m".into(),
        })
    };
    let transport = || {
        Err(FetchError::Transport {
            url: "u".into(),
            message: "m".into(),
        })
    };
    type Case = (&'static str, fn() -> Result<Fragment, FetchError>, bool);
    let cases: &[Case] = &[
        ("timeout", timeout, true),
        ("connect", connect, true),
        ("truncated", truncated, true),
        ("transport", transport, true),
        ("500", || status(500), true),
        ("504", || status(504), true),
        ("404", || status(404), false),
        ("429", || status(429), false),
        ("too large", too_large, false),
        ("refused", refused, false),
        ("ok", ok, false),
    ];
    for (name, result, opens) in cases {
        let hand = Hand::new();
        let (b, _) = breakers(&hand);
        // Two of them in a row reach the origin's threshold.
        for _ in 0..2 {
            fetch(&b, "http://o.test/f", result()).expect("closed");
        }
        let want = if *opens {
            BreakerState::Open
        } else {
            BreakerState::Closed
        };
        assert_eq!(state_of(&b, "o.test:80"), Some(want), "{name}");
    }
    // Refused by our rules says nothing: it neither counts nor resets.
    let hand = Hand::new();
    let (b, _) = breakers(&hand);
    fetch(&b, "http://o.test/f", timeout()).expect("closed");
    fetch(&b, "http://o.test/f", refused()).expect("closed");
    fetch(&b, "http://o.test/f", timeout()).expect("closed");
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
}

#[test]
fn one_probe_after_the_open_time_closes_on_success() {
    let hand = Hand::new();
    let (b, _) = breakers(&hand);
    let a = "http://a.test:81/f";
    for _ in 0..3 {
        fetch(&b, a, timeout()).expect("closed");
    }
    hand.advance(Duration::from_millis(999));
    assert!(b.admit(&url(a), SECOND).is_err(), "open for 1 s");
    hand.advance(Duration::from_millis(1));
    let probe = b.admit(&url(a), SECOND).expect("the probe goes through");
    assert_eq!(state_of(&b, "a.test:81"), Some(BreakerState::HalfOpen));
    let err = b.admit(&url(a), SECOND).err().expect("one probe at a time");
    assert!(
        matches!(err, FetchError::BreakerOpen { retry_in: None, .. }),
        "{err:?}"
    );
    let _ = probe.settle(ok());
    assert_eq!(state_of(&b, "a.test:81"), Some(BreakerState::Closed));
    // Closed anew: the count starts again from zero, and the open time from the first one.
    fetch(&b, a, timeout()).expect("closed");
    fetch(&b, a, timeout()).expect("closed");
    assert!(b.admit(&url(a), SECOND).is_ok(), "two failures of three");
    fetch(&b, a, timeout()).expect("closed");
    hand.advance(Duration::from_millis(1000));
    assert!(
        b.admit(&url(a), SECOND).is_ok(),
        "open for 1 s again, not 2"
    );
}

#[test]
fn a_failed_probe_doubles_the_open_time_up_to_the_cap() {
    let hand = Hand::new();
    let (b, metrics) = breakers(&hand);
    let a = "http://a.test:81/f";
    for _ in 0..3 {
        fetch(&b, a, timeout()).expect("closed");
    }
    for open_ms in [1000, 2000, 4000, 4000] {
        hand.advance(Duration::from_millis(open_ms - 1));
        assert!(
            b.admit(&url(a), SECOND).is_err(),
            "still open before {open_ms} ms"
        );
        hand.advance(Duration::from_millis(1));
        fetch(&b, a, status(502)).expect("the probe goes through");
        assert_eq!(state_of(&b, "a.test:81"), Some(BreakerState::Open));
    }
    assert!(metrics
        .render()
        .contains("esi_proxy_breaker_opens_total{host=\"a.test:81\"} 5"));
}

#[test]
fn late_results_of_fetches_admitted_before_the_open_do_not_count() {
    let hand = Hand::new();
    let (b, _) = breakers(&hand);
    let o = "http://o.test/f";
    let early = b.admit(&url(o), SECOND).expect("closed");
    fetch(&b, o, timeout()).expect("closed");
    fetch(&b, o, timeout()).expect("closed");
    let _ = early.settle(ok());
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
    hand.advance(Duration::from_millis(100));
    let probe = b.admit(&url(o), SECOND).expect("probe");
    let _ = probe.settle(timeout());
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
    // Reopened for 200 ms: the failed probe doubled it.
    hand.advance(Duration::from_millis(199));
    assert!(b.admit(&url(o), SECOND).is_err());
}

#[test]
fn a_dropped_or_refused_probe_lets_the_next_fetch_probe() {
    let hand = Hand::new();
    let (b, _) = breakers(&hand);
    let o = "http://o.test/f";
    fetch(&b, o, timeout()).expect("closed");
    fetch(&b, o, timeout()).expect("closed");
    hand.advance(Duration::from_millis(100));
    drop(b.admit(&url(o), SECOND).expect("probe"));
    let probe = b
        .admit(&url(o), SECOND)
        .expect("the dropped probe freed its slot");
    let refused = Err(FetchError::Refused {
        url: "u".into(),
        reason: "r".into(),
    });
    let _ = probe.settle(refused);
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::HalfOpen));
    fetch(&b, o, ok()).expect("the refused probe freed its slot");
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Closed));
}

#[test]
fn hosts_without_a_breaker_are_never_refused() {
    let hand = Hand::new();
    let (b, _) = breakers(&hand);
    for u in ["http://b.test:82/f", "http://elsewhere.test/f"] {
        for _ in 0..10 {
            fetch(&b, u, timeout()).expect("no breaker");
        }
    }
    let hosts: Vec<String> = b.states().into_iter().map(|(h, _)| h).collect();
    assert_eq!(hosts, ["a.test:81", "o.test:80"]);
}

#[test]
fn a_reload_keeps_listed_hosts_state_under_their_new_policy() {
    let hand = Hand::new();
    let (b, metrics) = breakers(&hand);
    let a = "http://a.test:81/f";
    for _ in 0..3 {
        fetch(&b, a, timeout()).expect("closed");
    }
    fetch(&b, "http://o.test/f", timeout()).expect("closed");
    b.publish_metrics();
    assert!(metrics
        .render()
        .contains("esi_proxy_breaker_state{host=\"a.test:81\"} 1"));
    // a.test keeps its open breaker; o.test keeps its one failure, now with a threshold of 1
    // more; c.test is new.
    let reloaded = "[server]\norigin = \"http://o.test\"\n\
        [fetch.breaker]\nfailures = 2\nopen_ms = 50\nmax_open_ms = 250\n\
        [[fetch.hosts]]\nurl = \"http://a.test:81\"\nbreaker = { failures = 1 }\n\
        [[fetch.hosts]]\nurl = \"http://c.test:83\"\n";
    b.configure(&settings(reloaded));
    assert!(b.admit(&url(a), SECOND).is_err(), "still open");
    fetch(&b, "http://o.test/f", timeout()).expect("closed");
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
    assert_eq!(state_of(&b, "c.test:83"), Some(BreakerState::Closed));
    // The new policy applies from now on: a.test's next opening is 50 ms (its own open_ms is
    // gone), after a failed probe.
    hand.advance(Duration::from_millis(1000));
    fetch(&b, a, ok()).expect("probe");
    fetch(&b, a, timeout()).expect("closed");
    assert_eq!(state_of(&b, "a.test:81"), Some(BreakerState::Open));
    hand.advance(Duration::from_millis(50));
    assert!(b.admit(&url(a), SECOND).is_ok());

    // Hosts no longer listed lose their breaker, and their gauge says closed.
    b.configure(&settings("[server]\norigin = \"http://o.test\"\n"));
    assert!(b.admit(&url(a), SECOND).is_ok(), "no breaker");
    assert_eq!(state_of(&b, "a.test:81"), None);
    assert!(metrics
        .render()
        .contains("esi_proxy_breaker_state{host=\"a.test:81\"} 0"));
    // Disabled everywhere: none at all.
    b.configure(&settings("[fetch.breaker]\nenabled = false\n"));
    assert!(b.states().is_empty());
}

#[test]
fn states_report_as_gauge_values() {
    for (state, want) in [
        (BreakerState::Closed, 0.0),
        (BreakerState::Open, 1.0),
        (BreakerState::HalfOpen, 2.0),
    ] {
        assert!((state.gauge() - want).abs() < f64::EPSILON, "{state:?}");
    }
    let json = serde_json::to_string(&BreakerState::HalfOpen).expect("serializes");
    assert_eq!(json, "\"half-open\"");
}

#[test]
fn a_fetch_given_up_on_near_its_deadline_counts_as_a_timeout() {
    let hand = Hand::new();
    let (b, _) = breakers(&hand);
    let o = "http://o.test/f";
    // Given up on early (the client left): nothing counts, however often.
    for _ in 0..5 {
        let ticket = b.admit(&url(o), SECOND).expect("closed");
        hand.advance(Duration::from_millis(899));
        drop(ticket);
    }
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Closed));
    // Given up on at 90% of the deadline or later: timeouts.
    for _ in 0..2 {
        let ticket = b.admit(&url(o), SECOND).expect("closed");
        hand.advance(Duration::from_millis(900));
        drop(ticket);
    }
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
    // A probe given up on late is a failed probe: reopened for twice as long.
    hand.advance(Duration::from_millis(100));
    let probe = b.admit(&url(o), SECOND).expect("probe");
    hand.advance(SECOND);
    drop(probe);
    assert_eq!(state_of(&b, "o.test:80"), Some(BreakerState::Open));
    hand.advance(Duration::from_millis(199));
    assert!(b.admit(&url(o), SECOND).is_err());
}
