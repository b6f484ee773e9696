//! The demo on loopback: the layout and every fragment over real HTTP, their ESI markup parsed by
//! esi-proxy's own parser (`markup`), and the services' knobs and actions (`knobs`). esi-proxy is
//! a dev-dependency here with its default features off, so it does not pull this crate back in;
//! composing the page through the proxy is tested in the root package (`tests/demo.rs`).

use super::*;

mod knobs;
mod markup;

/// A demo with no latency, so fetching ~200 URLs in a row stays quick.
async fn start() -> Demo {
    Demo::start(DemoConfig::default().without_latency())
        .await
        .expect("demo starts on loopback")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client.get(url).send().await.expect("service answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn service_base(demo: &Demo, name: &str) -> String {
    let (_, addr) = demo
        .services
        .iter()
        .find(|(n, _)| n == name)
        .expect("service");
    format!("http://{addr}")
}
