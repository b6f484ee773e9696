//! Which fragment services the demo shop runs and what each serves, by name and path: plain
//! data, read by the config (to know the names), the pages (footer columns) and the servers.
//! Imports nothing from the rest of the demo.

/// The name the gateway's knobs and control handle go by.
pub const GATEWAY: &str = "gateway";

/// A fragment service: its name (also its team's) and what it serves.
#[derive(Debug)]
pub(crate) struct ServiceDef {
    pub name: &'static str,
    pub fragments: &'static [FragmentDef],
}

/// A fragment: served at `/{name}` or `/{name}/{arg}`.
#[derive(Debug)]
pub(crate) struct FragmentDef {
    pub name: &'static str,
    pub arg: Arg,
    /// Whether the body holds ESI (and is marked `Surrogate-Control: content="ESI/1.0"`).
    pub esi: bool,
}

/// The argument a fragment's path takes.
#[derive(Debug)]
pub(crate) enum Arg {
    /// None: `/{name}`.
    None,
    /// `1..=n`.
    Index(u32),
    /// One of these words.
    Names(&'static [&'static str]),
    /// A tile's SKU from the catalog (`NF-1000` ...).
    Sku,
    /// A star rating `0.0` to `5.0` in steps of 0.1.
    Rating,
}

const fn f(name: &'static str) -> FragmentDef {
    FragmentDef {
        name,
        arg: Arg::None,
        esi: false,
    }
}

const fn esi(name: &'static str) -> FragmentDef {
    FragmentDef {
        name,
        arg: Arg::None,
        esi: true,
    }
}

const fn with(name: &'static str, arg: Arg) -> FragmentDef {
    FragmentDef {
        name,
        arg,
        esi: false,
    }
}

/// Columns of the footer, in page order.
pub(crate) const FOOTER_COLUMNS: &[&str] = &["shop", "help", "company", "services", "community"];

/// Every fragment service of the demo shop, as separate teams would run them.
pub(crate) const SERVICES: &[ServiceDef] = &[
    ServiceDef {
        name: "consent",
        fragments: &[f("banner")],
    },
    ServiceDef {
        name: "promotions",
        fragments: &[f("strip"), f("coupon"), f("member-price"), f("bundle")],
    },
    ServiceDef {
        name: "header",
        fragments: &[f("logo"), f("help")],
    },
    ServiceDef {
        name: "search",
        fragments: &[f("box")],
    },
    ServiceDef {
        name: "locale",
        fragments: &[f("picker"), f("footer")],
    },
    ServiceDef {
        name: "wishlist",
        fragments: &[f("count"), f("button")],
    },
    ServiceDef {
        name: "account",
        fragments: &[esi("menu")],
    },
    ServiceDef {
        name: "cart",
        fragments: &[esi("badge")],
    },
    ServiceDef {
        name: "nav",
        fragments: &[f("menu"), f("categories")],
    },
    ServiceDef {
        name: "breadcrumbs",
        fragments: &[f("trail")],
    },
    ServiceDef {
        name: "gallery",
        fragments: &[f("main"), with("thumb", Arg::Index(8)), f("video")],
    },
    ServiceDef {
        name: "sharing",
        fragments: &[f("buttons")],
    },
    ServiceDef {
        name: "catalog",
        fragments: &[
            f("brand"),
            f("title"),
            f("badges"),
            f("sku"),
            f("colours"),
            f("sizes"),
            f("description"),
            f("highlights"),
            f("specs"),
            f("materials"),
            f("care"),
        ],
    },
    ServiceDef {
        name: "reviews",
        fragments: &[
            esi("summary"),
            f("histogram"),
            esi("list"),
            f("photos"),
            f("write"),
        ],
    },
    ServiceDef {
        name: "ratings",
        fragments: &[with("stars", Arg::Rating)],
    },
    ServiceDef {
        name: "pricing",
        fragments: &[f("price"), f("was"), f("installments"), f("tax-note")],
    },
    ServiceDef {
        name: "size-guide",
        fragments: &[f("fit"), f("table")],
    },
    ServiceDef {
        name: "inventory",
        fragments: &[f("stock")],
    },
    ServiceDef {
        name: "delivery",
        fragments: &[f("estimate"), f("click-collect"), f("returns")],
    },
    ServiceDef {
        name: "stores",
        fragments: &[f("nearest")],
    },
    ServiceDef {
        name: "compare",
        fragments: &[f("toggle")],
    },
    ServiceDef {
        name: "financing",
        fragments: &[f("offer")],
    },
    ServiceDef {
        name: "warranty",
        fragments: &[f("offer")],
    },
    ServiceDef {
        name: "seller",
        fragments: &[f("info")],
    },
    ServiceDef {
        name: "loyalty",
        fragments: &[esi("points")],
    },
    ServiceDef {
        name: "qa",
        fragments: &[f("questions"), f("ask")],
    },
    ServiceDef {
        name: "tiles",
        fragments: &[with("tile", Arg::Sku)],
    },
    ServiceDef {
        name: "recommendations",
        fragments: &[esi("trending")],
    },
    ServiceDef {
        name: "ads",
        fragments: &[with("sponsored", Arg::Index(4))],
    },
    ServiceDef {
        name: "recently-viewed",
        fragments: &[esi("strip")],
    },
    ServiceDef {
        name: "newsletter",
        fragments: &[f("signup")],
    },
    ServiceDef {
        name: "footer",
        fragments: &[
            with("column", Arg::Names(FOOTER_COLUMNS)),
            f("social"),
            f("payments"),
            f("apps"),
            f("legal"),
        ],
    },
    ServiceDef {
        name: "chat",
        fragments: &[f("launcher")],
    },
    ServiceDef {
        name: "analytics",
        fragments: &[f("beacon")],
    },
    // Snapshots a CDN would hold: the `alt` of includes whose service may be down.
    ServiceDef {
        name: "static",
        fragments: &[f("nav"), f("house-ad"), f("image-placeholder")],
    },
];

/// Services whose fragments show the page's own product: a change to it reaches them all.
const PRODUCT_SERVICES: [&str; 14] = [
    "gallery",
    "catalog",
    "reviews",
    "pricing",
    "size-guide",
    "inventory",
    "delivery",
    "qa",
    "breadcrumbs",
    "sharing",
    "compare",
    "financing",
    "warranty",
    "seller",
];

/// Services whose fragments show prices.
const PRICE_SERVICES: [&str; 4] = ["pricing", "promotions", "tiles", "financing"];

/// The `Surrogate-Key` a fragment of `service` served with `arg` carries, so a purge by key
/// reaches what changed: the service's name; `product` (`product-4410`, the page's product)
/// where it shows that product, or a tile's own product (`/tile/NF-1007`: `product-1007`);
/// and `prices` where it shows a price.
pub(crate) fn surrogate_keys(service: &str, arg: &str, product: &str) -> String {
    let mut keys = vec![service.to_owned()];
    if PRODUCT_SERVICES.contains(&service) {
        keys.push(product.to_owned());
    }
    if service == "tiles" {
        keys.push(product_key(arg));
    }
    if PRICE_SERVICES.contains(&service) {
        keys.push("prices".to_owned());
    }
    keys.join(" ")
}

/// The surrogate key of the product with `sku`: `product-` and the SKU's number
/// (`NF-4410-22`: `product-4410`).
pub(crate) fn product_key(sku: &str) -> String {
    let number = sku.split('-').nth(1).unwrap_or(sku);
    format!("product-{number}")
}

// === impl FragmentDef ===

impl FragmentDef {
    /// Every path this fragment is served at, given the SKUs of the catalog's tiles.
    pub(crate) fn paths<'a>(&self, skus: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
        let args: Vec<String> = match self.arg {
            Arg::None => return vec![(format!("/{}", self.name), String::new())],
            Arg::Index(n) => (1..=n).map(|i| i.to_string()).collect(),
            Arg::Names(names) => names.iter().map(|n| n.to_string()).collect(),
            Arg::Sku => skus.map(str::to_string).collect(),
            Arg::Rating => (0..=50).map(|r| format!("{}.{}", r / 10, r % 10)).collect(),
        };
        args.into_iter()
            .map(|arg| (format!("/{}/{arg}", self.name), arg))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_paths_cover_their_arguments() {
        let skus = ["NF-1000", "NF-1001"];
        let paths = |d: &FragmentDef| -> Vec<String> {
            d.paths(skus.iter().copied())
                .into_iter()
                .map(|(p, _)| p)
                .collect()
        };
        assert_eq!(paths(&f("price")), ["/price"]);
        assert_eq!(
            paths(&with("thumb", Arg::Index(3))),
            ["/thumb/1", "/thumb/2", "/thumb/3"]
        );
        assert_eq!(
            paths(&with("tile", Arg::Sku)),
            ["/tile/NF-1000", "/tile/NF-1001"]
        );
        let ratings = paths(&with("stars", Arg::Rating));
        assert_eq!(ratings.len(), 51);
        assert_eq!(
            (ratings[0].as_str(), ratings[46].as_str()),
            ("/stars/0.0", "/stars/4.6")
        );
        let names: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "service names are unique");
        assert!((25..=35).contains(&names.len()), "{} services", names.len());
    }

    #[test]
    fn fragments_are_tagged_with_what_they_show() {
        let cases = [
            ("pricing", "", "pricing product-4410 prices"),
            ("tiles", "NF-1007", "tiles product-1007 prices"),
            ("catalog", "", "catalog product-4410"),
            ("footer", "shop", "footer"),
        ];
        for (service, arg, want) in cases {
            assert_eq!(
                surrogate_keys(service, arg, "product-4410"),
                want,
                "{service}"
            );
        }
        assert_eq!(product_key("NF-4410-22"), "product-4410");
        let names: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        for name in PRODUCT_SERVICES.iter().chain(&PRICE_SERVICES) {
            assert!(names.contains(name), "{name} is a service");
        }
    }
}
