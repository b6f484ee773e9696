//! What a composed page must hold: every plain (non-ESI) fragment body of a service that stays
//! healthy, fetched from the demo before any fault, that the page holds with every fault at its
//! worst. During the soak a page must hold each of them, whole; a faulted service's slots may
//! hold its body or its fallback, never its error markup.

use std::collections::BTreeSet;

/// Fragment bodies shorter than this are too generic to prove their slot was filled.
const MIN_BODY: usize = 24;

/// The bodies a page must hold, each with its service.
pub struct Expected {
    bodies: Vec<(String, String)>,
}

// === impl Expected ===

impl Expected {
    /// Fetches every fragment URL from its service directly, while the demo is healthy.
    pub async fn fetch_bodies(demo: &fragments::demo::Demo) -> Expected {
        let client = reqwest::Client::new();
        let mut bodies = Vec::new();
        for url in demo.fragment_urls() {
            let resp = client.get(url).send().await.expect("a fragment answers");
            assert!(resp.status().is_success(), "{url}: {}", resp.status());
            let esi = resp.headers().contains_key("surrogate-control");
            let service = resp
                .headers()
                .get("x-demo-service")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = resp.text().await.expect("fragment body");
            if !esi && body.trim().len() >= MIN_BODY {
                bodies.push((service, body));
            }
        }
        Expected { bodies }
    }

    /// Keeps the bodies of services not in `faulted` that the page at `base` holds, composed
    /// now, with every fault at its worst: a steady fragment only ever included by a faulted
    /// ESI fragment is not in it.
    pub async fn in_worst_page(self, base: &str, faulted: &BTreeSet<&'static str>) -> Expected {
        let page = reqwest::get(format!("{base}/"))
            .await
            .expect("the first page")
            .text()
            .await
            .expect("its body");
        assert!(page.contains("</html>"), "the page is whole");
        let bodies: Vec<_> = self
            .bodies
            .into_iter()
            .filter(|(service, body)| {
                !faulted.contains(service.as_str()) && page.contains(body.as_str())
            })
            .collect();
        assert!(
            bodies.len() >= 50,
            "even the worst page holds most fragments: {}",
            bodies.len()
        );
        Expected { bodies }
    }

    /// How many bodies every page is checked for.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Checks one composed page; the error says what is wrong with it.
    pub fn check(&self, page: &str) -> Result<(), String> {
        if !page.trim_end().ends_with("</html>") {
            return Err(format!("cut after {} bytes", page.len()));
        }
        if page.contains("<esi:") || page.contains("</esi:") {
            return Err("ESI markup reached the client".into());
        }
        if page.contains("class=\"demo-error\"") {
            return Err("a failed fragment's error body reached the page".into());
        }
        for (service, body) in &self.bodies {
            if !page.contains(body.as_str()) {
                let head: String = body.chars().take(60).collect();
                return Err(format!("{service}'s fragment {head:?}... is missing"));
            }
        }
        Ok(())
    }
}
