//! The shop's data: the product on the page, the tiles the recommendation carousels show, its
//! reviews and questions. Built once per demo, deterministically (same text on every run).
//! No I/O; the templates read it, the services never change it.

use std::fmt::Write as _;

use crate::Rng;

/// Everything the demo pages show.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    /// The product the page sells.
    pub product: Product,
    /// Small product cards: recommendations, trending, recently viewed.
    pub tiles: Vec<Tile>,
    /// Sponsored product cards (`/sponsored/1` is the first).
    pub ads: Vec<Tile>,
    /// Customer reviews, newest first.
    pub reviews: Vec<Review>,
    /// Customer questions with their top answer.
    pub questions: Vec<Question>,
    /// Colours the product comes in; the first is the one shown.
    pub colours: Vec<Colour>,
    /// Sizes with their stock.
    pub sizes: Vec<Size>,
    /// Technical details: name, value.
    pub specs: Vec<(&'static str, &'static str)>,
    /// Size chart rows: size, chest cm, waist cm, back length cm.
    pub size_chart: Vec<[&'static str; 4]>,
    /// Share of reviews per star count, 5 stars first, in percent.
    pub histogram: Vec<(u8, u8)>,
}

/// The product on the page.
#[derive(Debug, Clone)]
pub(crate) struct Product {
    pub sku: &'static str,
    pub brand: &'static str,
    pub name: &'static str,
    pub price: &'static str,
    pub was: &'static str,
    pub saving: &'static str,
    pub rating: f32,
    pub review_count: u32,
}

/// A product card.
#[derive(Debug, Clone)]
pub(crate) struct Tile {
    pub sku: String,
    pub name: String,
    pub brand: &'static str,
    pub price: String,
    pub rating: f32,
    pub reviews: u32,
    /// Hue (0..360) of the picture placeholder.
    pub hue: u32,
    /// A badge such as "New", or empty.
    pub badge: &'static str,
}

/// A customer review.
#[derive(Debug, Clone)]
pub(crate) struct Review {
    pub author: &'static str,
    pub stars: u8,
    pub title: &'static str,
    pub body: &'static str,
    pub date: &'static str,
    pub size: &'static str,
    pub helpful: u32,
}

/// A customer question and its top answer.
#[derive(Debug, Clone)]
pub(crate) struct Question {
    pub question: &'static str,
    pub answer: &'static str,
    pub by: &'static str,
    pub answers: u32,
}

/// A colour choice.
#[derive(Debug, Clone)]
pub(crate) struct Colour {
    pub name: &'static str,
    pub hex: &'static str,
}

/// A size choice.
#[derive(Debug, Clone)]
pub(crate) struct Size {
    pub label: &'static str,
    pub in_stock: bool,
}

/// How many tiles the catalog holds (SKUs `NF-1000` to `NF-1059`).
pub(crate) const TILE_COUNT: usize = 60;

const ADJECTIVES: &[&str] = &[
    "Alpine", "Summit", "Ridge", "Cascade", "Fjord", "Granite", "Cirrus", "Tundra", "Harbor",
    "Canyon", "Boreal", "Drift",
];
const NOUNS: &[&str] = &[
    "Fleece Jacket",
    "Rain Shell",
    "Down Vest",
    "Hiking Boot",
    "Merino Base Layer",
    "Beanie",
    "Day Pack 22L",
    "Trail Socks (2 pack)",
    "Softshell Pants",
    "Insulated Gloves",
    "Trail Runner",
    "Packable Parka",
];
const BRANDS: &[&str] = &["Northfold", "Kestrel", "Outwell & Co", "Lumen Peak"];
const BADGES: &[&str] = &["", "", "", "New", "", "Bestseller", "", "-20%"];

// === impl Catalog ===

impl Catalog {
    /// The demo shop's data; the same on every call.
    pub(crate) fn new() -> Self {
        Self {
            product: Product {
                sku: "NF-4410-22",
                brand: "Northfold",
                name: "Trailhead 2 Waterproof Hiking Jacket",
                price: "€149.00",
                was: "€189.00",
                saving: "Save €40 (21%)",
                rating: 4.6,
                review_count: 1284,
            },
            tiles: (0..TILE_COUNT).map(tile).collect(),
            ads: ads(),
            reviews: reviews(),
            questions: questions(),
            colours: vec![
                Colour {
                    name: "Forest green",
                    hex: "#2f5d46",
                },
                Colour {
                    name: "Glacier blue",
                    hex: "#4f7fa8",
                },
                Colour {
                    name: "Ember red",
                    hex: "#b5452f",
                },
                Colour {
                    name: "Graphite",
                    hex: "#3b3f45",
                },
                Colour {
                    name: "Sand",
                    hex: "#c8b38d",
                },
            ],
            sizes: ["XS", "S", "M", "L", "XL", "XXL"]
                .iter()
                .map(|&label| Size {
                    label,
                    in_stock: label != "XS",
                })
                .collect(),
            specs: vec![
                ("Fit", "Regular, room for a mid layer"),
                ("Weight", "410 g (size M)"),
                ("Waterproofing", "20,000 mm hydrostatic head"),
                ("Breathability", "15,000 g/m²/24h"),
                ("Seams", "Fully taped"),
                ("Hood", "Helmet-compatible, 3-point adjustable"),
                ("Pockets", "2 hand, 1 chest, 1 inner"),
                ("Vents", "Pit zips"),
            ],
            size_chart: vec![
                ["XS", "84–88", "70–74", "70"],
                ["S", "89–94", "75–80", "72"],
                ["M", "95–100", "81–86", "74"],
                ["L", "101–107", "87–93", "76"],
                ["XL", "108–114", "94–100", "78"],
                ["XXL", "115–121", "101–107", "80"],
            ],
            histogram: vec![(5, 71), (4, 18), (3, 6), (2, 3), (1, 2)],
        }
    }

    /// The tile with this SKU.
    pub(crate) fn tile(&self, sku: &str) -> Option<&Tile> {
        self.tiles.iter().find(|t| t.sku == sku)
    }

    /// Tiles `range` of the catalog, for one carousel.
    pub(crate) fn tiles(&self, range: std::ops::Range<usize>) -> &[Tile] {
        &self.tiles[range]
    }
}

/// Tile `i`: a name, brand, price and rating drawn from a generator seeded with `i`.
fn tile(i: usize) -> Tile {
    let mut rng = Rng::new(0x7117 + i as u64);
    let adjective = ADJECTIVES[i % ADJECTIVES.len()];
    let noun = NOUNS[(i * 5 + i / ADJECTIVES.len()) % NOUNS.len()];
    let euros = 19 + rng.below(220);
    let cents = [0, 50, 95, 99][rng.below(4) as usize];
    let mut price = String::new();
    let _ = write!(price, "€{euros}.{cents:02}");
    Tile {
        sku: format!("NF-{}", 1000 + i),
        name: format!("{adjective} {noun}"),
        brand: BRANDS[rng.below(BRANDS.len() as u64) as usize],
        price,
        rating: 3.5 + rng.below(16) as f32 / 10.0,
        reviews: 3 + rng.below(900) as u32,
        hue: rng.below(360) as u32,
        badge: BADGES[rng.below(BADGES.len() as u64) as usize],
    }
}

fn ads() -> Vec<Tile> {
    [
        ("Kestrel", "Carbon Trekking Poles", "€89.00", 28),
        ("Lumen Peak", "Headlamp 400", "€44.95", 48),
        ("Outwell & Co", "Ultralight Tent 2P", "€329.00", 95),
        ("Northfold", "Insulated Bottle 750 ml", "€29.99", 200),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (brand, name, price, hue))| Tile {
        sku: format!("AD-{}", i + 1),
        name: name.to_string(),
        brand,
        price: price.to_string(),
        rating: 4.5,
        reviews: 0,
        hue,
        badge: "Sponsored",
    })
    .collect()
}

fn reviews() -> Vec<Review> {
    vec![
        Review {
            author: "Maja K.",
            stars: 5,
            title: "Dry after six hours of Scottish drizzle",
            body: "Wore it on the West Highland Way in properly wet weather and stayed dry. \
                   The pit zips make a real difference on the climbs.",
            date: "2 days ago",
            size: "M",
            helpful: 41,
        },
        Review {
            author: "Tom R.",
            stars: 4,
            title: "Great shell, sleeves slightly long",
            body: "Light, packs small, hood fits over my climbing helmet. Sleeves are a touch \
                   long for me, but the cuffs adjust well.",
            date: "1 week ago",
            size: "L",
            helpful: 17,
        },
        Review {
            author: "Priya S.",
            stars: 5,
            title: "Colour is even nicer in person",
            body: "The forest green is lovely. Room for a fleece underneath without looking \
                   baggy. Pockets sit above a hip belt, which is rare.",
            date: "3 weeks ago",
            size: "S",
            helpful: 12,
        },
        Review {
            author: "Jonas W.",
            stars: 3,
            title: "Good, but rustles a bit",
            body: "Does the job in the rain. The fabric is noisier than my old jacket and the \
                   inner pocket is small for a large phone.",
            date: "1 month ago",
            size: "XL",
            helpful: 9,
        },
        Review {
            author: "Elena G.",
            stars: 5,
            title: "Third season and still waterproof",
            body: "Re-proofed once, otherwise no care needed. Zips still run smoothly. Would \
                   buy again.",
            date: "2 months ago",
            size: "M",
            helpful: 64,
        },
    ]
}

fn questions() -> Vec<Question> {
    vec![
        Question {
            question: "Is there room for a down jacket underneath?",
            answer: "A light down jacket fits in your usual size; for a thick one, size up.",
            by: "Northfold customer care",
            answers: 4,
        },
        Question {
            question: "Does the hood roll away into the collar?",
            answer: "No, it stays out, but it has a volume adjuster at the back so it sits \
                     flat when not in use.",
            by: "Ravi (verified buyer)",
            answers: 2,
        },
        Question {
            question: "Can I wash it in a machine?",
            answer: "Yes, 30 °C with a technical wash, then tumble dry low to refresh the \
                     water repellency.",
            by: "Northfold customer care",
            answers: 3,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_deterministic_distinct_and_in_range() {
        let (a, b) = (Catalog::new(), Catalog::new());
        assert_eq!(a.tiles.len(), TILE_COUNT);
        for (x, y) in a.tiles.iter().zip(&b.tiles) {
            assert_eq!((&x.sku, &x.name, &x.price), (&y.sku, &y.name, &y.price));
            assert!((3.5..=5.0).contains(&x.rating), "{}: {}", x.sku, x.rating);
            assert!(x.hue < 360);
        }
        let names: std::collections::HashSet<_> = a.tiles.iter().map(|t| &t.name).collect();
        assert!(names.len() > TILE_COUNT / 2, "names vary: {}", names.len());
        assert_eq!(a.tile("NF-1007").map(|t| t.sku.as_str()), Some("NF-1007"));
        assert!(a.tile("NF-9999").is_none());
    }
}
