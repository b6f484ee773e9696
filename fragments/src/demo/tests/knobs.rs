//! The services at runtime: the down switch, error rates and the other knobs, set by query and
//! through the handle; refusals; the gateway's cookie actions; start and shutdown.

use super::*;

#[tokio::test]
async fn down_switch_refuses_with_503_and_recovers() {
    let demo = start().await;
    let client = client();
    let reviews = demo
        .fragment_urls()
        .iter()
        .find(|u| u.ends_with("/summary"))
        .expect("summary")
        .clone();
    assert_eq!(get(&client, &reviews).await.0, 200);
    assert!(demo.set_down("reviews", true));
    let (status, headers, _) = get(&client, &reviews).await;
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "cache-control"), "no-store");
    assert!(headers.get("surrogate-control").is_none());
    assert!(demo.handle().knobs("reviews").expect("knobs").down);
    assert!(demo.set_down("reviews", false));
    assert_eq!(get(&client, &reviews).await.0, 200);
    assert_eq!(get(&client, &format!("{reviews}?down=1")).await.0, 503);
    assert!(!demo.set_down("no-such-service", true));

    assert!(demo.set_down(GATEWAY, true));
    assert_eq!(get(&client, &demo.page_url()).await.0, 503);
}

#[tokio::test]
async fn error_rate_one_answers_500_and_zero_never_does() {
    let mut config = DemoConfig::default().without_latency();
    config
        .services
        .entry("pricing".into())
        .or_default()
        .error_rate = Some(1.0);
    let demo = Demo::start(config).await.expect("starts");
    let client = client();
    let url = |suffix: &str| {
        demo.fragment_urls()
            .iter()
            .find(|u| u.ends_with(suffix))
            .expect("served")
            .clone()
    };
    for _ in 0..5 {
        let (status, headers, _) = get(&client, &url("/price")).await;
        assert_eq!(status, 500);
        assert_eq!(header(&headers, "cache-control"), "no-store");
    }
    assert_eq!(
        get(&client, &format!("{}?error_rate=0", url("/price")))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&client, &format!("{}?error_rate=1", url("/stock")))
            .await
            .0,
        500
    );
    assert!(demo.handle().set_error_rate("pricing", 0.0));
    assert_eq!(get(&client, &url("/price")).await.0, 200);
    assert!(!demo.handle().set_error_rate("nope", 1.0));
}

#[tokio::test]
async fn knobs_are_set_at_runtime_and_bounded() {
    let demo = start().await;
    let client = client();
    let handle = demo.handle();
    assert!(demo.set_latency("recommendations", 5));
    assert!(!demo.set_latency("nope", 5));
    assert!(handle.set_jitter("recommendations", 0));
    assert!(handle.set_max_age("recommendations", 0));
    let knobs = handle.knobs("recommendations").expect("knobs");
    assert_eq!(
        (knobs.latency_ms, knobs.jitter_ms, knobs.max_age_s),
        (5, 0, 0)
    );
    assert!(handle.knobs("nope").is_none());
    assert!(demo.set_latency("tiles", u64::MAX));
    assert_eq!(
        handle.knobs("tiles").expect("knobs").latency_ms,
        MAX_LATENCY_MS
    );
    assert_eq!(handle.names().len(), 36);

    let trending = demo
        .fragment_urls()
        .iter()
        .find(|u| u.ends_with("/trending"))
        .expect("served")
        .clone();
    let (status, headers, _) = get(&client, &trending).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), "no-store", "max_age 0");
    assert_eq!(header(&headers, "x-demo-service"), "recommendations");
    let (_, headers, _) = get(&client, &format!("{trending}?max_age_s=90&latency_ms=1")).await;
    assert_eq!(header(&headers, "cache-control"), "public, max-age=90");
    for bad in [
        "latency_ms=60001",
        "jitter_ms=x",
        "error_rate=2",
        "down=maybe",
    ] {
        assert_eq!(
            get(&client, &format!("{trending}?{bad}")).await.0,
            400,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let demo = start().await;
    let client = client();
    let base = &demo.service_urls()[0];
    assert_eq!(get(&client, &format!("{base}/nope")).await.0, 404);
    assert_eq!(
        get(&client, &format!("{}nope", demo.page_url())).await.0,
        404
    );
    let tiles = demo
        .services
        .iter()
        .find(|(n, _)| n == "tiles")
        .expect("tiles")
        .1;
    assert_eq!(
        get(&client, &format!("http://{tiles}/tile/NF-9999"))
            .await
            .0,
        404
    );
    let post = client.post(demo.page_url()).send().await.expect("answers");
    assert_eq!(post.status().as_u16(), 405);
}

#[tokio::test]
async fn gateway_sets_cookies_to_try_the_personal_fragments() {
    let demo = start().await;
    let client = client();
    let page = demo.page_url();
    let resp = client
        .get(format!("{page}login?user=Ann"))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(header(resp.headers(), "location"), "/");
    assert_eq!(
        header(resp.headers(), "set-cookie"),
        "user=Ann; Path=/; SameSite=Lax"
    );
    let bad = client
        .get(format!("{page}login?user=%3Cb%3E"))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status().as_u16(), 400);
    let add = client
        .get(format!("{page}cart/add"))
        .header("cookie", "user=Ann; cart=2")
        .send()
        .await
        .expect("answers");
    assert_eq!(
        header(add.headers(), "set-cookie"),
        "cart=3; Path=/; SameSite=Lax"
    );
    let out = client
        .get(format!("{page}logout"))
        .send()
        .await
        .expect("answers");
    let cleared: Vec<_> = out.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cleared.len(), 2);
}

#[tokio::test]
async fn start_refuses_a_bad_config() {
    let mut config = DemoConfig::default();
    config.defaults.error_rate = 2.0;
    let err = Demo::start(config).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("defaults.error_rate"), "{err}");
}

#[tokio::test]
async fn shutdown_closes_every_listener() {
    let demo = start().await;
    let mut addrs: Vec<_> = demo.services.iter().map(|(_, a)| *a).collect();
    addrs.push(demo.gateway);
    demo.shutdown();
    // The aborted accept loops are dropped when the runtime next polls them: wait on that,
    // bounded, not on a clock.
    for addr in addrs {
        let mut closed = false;
        for _ in 0..1000 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(closed, "{addr} still accepts");
    }
}
