//! The catalog loaded on first start: 60 products in 6 categories, with
//! deterministic prices, stock (a few sold out) and sizes.
use crate::domain::{Dimensions, NewProduct};

const CATALOG: &[(&str, &str, &[&str])] = &[
    (
        "electronics",
        "ELEC",
        &[
            "Wireless Earbuds",
            "Noise-Cancelling Headphones",
            "Bluetooth Speaker",
            "USB-C Charger 65W",
            "Mechanical Keyboard",
            "Ergonomic Mouse",
            "27-inch Monitor",
            "Portable SSD 1TB",
            "Webcam 1080p",
            "Smart Watch",
        ],
    ),
    (
        "home",
        "HOME",
        &[
            "Ceramic Mug Set",
            "Cast Iron Skillet",
            "Linen Duvet Cover",
            "Desk Lamp",
            "French Press",
            "Bamboo Cutting Board",
            "Wool Throw Blanket",
            "Glass Storage Jars",
            "Chef's Knife",
            "Aroma Diffuser",
        ],
    ),
    (
        "books",
        "BOOK",
        &[
            "Designing Data-Intensive Applications",
            "Site Reliability Engineering",
            "The Rust Programming Language",
            "Release It!",
            "Building Microservices",
            "Database Internals",
            "Systems Performance",
            "Distributed Systems Notes",
            "Category Theory for Programmers",
            "The Art of Multiprocessor Programming",
        ],
    ),
    (
        "sports",
        "SPRT",
        &[
            "Yoga Mat",
            "Adjustable Dumbbells",
            "Running Shoes",
            "Cycling Helmet",
            "Jump Rope",
            "Foam Roller",
            "Trail Backpack 30L",
            "Insulated Water Bottle",
            "Tennis Racket",
            "Climbing Chalk Bag",
        ],
    ),
    (
        "clothing",
        "CLTH",
        &[
            "Merino T-Shirt",
            "Rain Jacket",
            "Denim Jeans",
            "Wool Socks 3-Pack",
            "Hooded Sweatshirt",
            "Leather Belt",
            "Down Vest",
            "Canvas Sneakers",
            "Linen Shirt",
            "Beanie",
        ],
    ),
    (
        "toys",
        "TOYS",
        &[
            "Wooden Train Set",
            "Puzzle 1000 Pieces",
            "Building Blocks",
            "Plush Fox",
            "Kite",
            "Chess Set",
            "Remote Control Car",
            "Watercolor Kit",
            "Marble Run",
            "Card Game Classics",
        ],
    ),
];

pub fn products() -> Vec<NewProduct> {
    let mut products = Vec::new();
    for (category_index, (category, prefix, names)) in CATALOG.iter().enumerate() {
        for (i, name) in names.iter().enumerate() {
            let n = (category_index * 10 + i) as i64;
            // Prices from 4.99 to a few hundred; a few items sold out.
            let price_minor = 499 + (n * 7_919) % 29_500;
            let stock = if i % 9 == 8 { 0 } else { 20 + (n * 37) % 480 };
            products.push(NewProduct {
                sku: format!("{prefix}-{:04}", i + 1),
                name: (*name).to_string(),
                description: format!("{name}: a shopfast {category} staple, built to last."),
                category: (*category).to_string(),
                price_minor,
                currency_code: "USD".to_string(),
                image_url: format!("https://img.shopfast.example/{prefix}-{:04}.jpg", i + 1).to_lowercase(),
                weight_grams: 100 + (n * 113) % 4_900,
                dimensions: Dimensions { length_mm: 50 + n * 3, width_mm: 40 + n * 2, height_mm: 10 + n },
                stock,
            });
        }
    }
    products
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_valid_unique_and_large_enough() {
        let products = products();
        assert!(products.len() >= 50);
        let mut skus: Vec<_> = products.iter().map(|p| p.sku.clone()).collect();
        skus.sort();
        skus.dedup();
        assert_eq!(skus.len(), products.len());
        assert!(products.iter().any(|p| p.stock == 0), "some items are sold out");
        for p in products {
            p.validate().unwrap();
        }
    }
}
