//! The price table: list prices per model, from `data/prices.toml` (dated, with its sources) or
//! from a file of the same format given in the configuration.

use serde::Deserialize;

/// One model's prices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// The model name, or the prefix of its versioned names.
    pub name: String,
    /// Who sells it.
    pub provider: String,
    /// US dollars per million input tokens.
    pub input_per_mtok: f64,
    /// US dollars per million output tokens.
    pub output_per_mtok: f64,
    /// The share taken off through the batch API (0.5 = half price).
    #[serde(default)]
    pub batch_discount: f64,
}

impl ModelPrice {
    /// The cost of one call.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64, batch: bool) -> f64 {
        let list = (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok) / 1e6;
        if batch {
            list * (1.0 - self.batch_discount)
        } else {
            list
        }
    }
}

/// Prices of every known model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// When the prices were taken from the sources.
    pub as_of: String,
    /// Where they come from.
    pub sources: Vec<String>,
    /// The models.
    #[serde(rename = "model")]
    pub models: Vec<ModelPrice>,
}

/// A price table file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid price table: {0}")]
pub struct PriceTableError(String);

const EMBEDDED: &str = include_str!("../data/prices.toml");

impl PriceTable {
    /// The table shipped in `data/prices.toml`.
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED).expect("the shipped price table is valid")
    }

    /// Parses and checks a table in the format of `data/prices.toml`.
    pub fn parse(text: &str) -> Result<Self, PriceTableError> {
        let table: PriceTable = toml::from_str(text).map_err(|e| PriceTableError(e.to_string()))?;
        for model in &table.models {
            let valid = !model.name.is_empty()
                && [model.input_per_mtok, model.output_per_mtok]
                    .iter()
                    .all(|p| p.is_finite() && *p >= 0.0)
                && (0.0..1.0).contains(&model.batch_discount);
            if !valid {
                return Err(PriceTableError(format!(
                    "model `{}` needs a name, prices of 0 or more, and a batch_discount from 0 to below 1",
                    model.name
                )));
            }
        }
        let mut names: Vec<&str> = table.models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(PriceTableError(format!("model `{}` is listed twice", pair[0])));
        }
        Ok(table)
    }

    /// The prices of `model`: the exact name, or else the longest name that prefixes it
    /// (`gpt-4o-2024-08-06` is `gpt-4o`, `gpt-4o-mini-2024-07-18` is `gpt-4o-mini`).
    pub fn find(&self, model: &str) -> Option<&ModelPrice> {
        let model = model.to_lowercase();
        self.models
            .iter()
            .filter(|m| model == m.name || model.starts_with(&format!("{}-", m.name)))
            .max_by_key(|m| m.name.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_prices_calls_by_exact_or_versioned_name() {
        let table = PriceTable::embedded();
        let cases: [(&str, u64, u64, bool, Option<f64>); 9] = [
            ("gpt-4o", 1_000_000, 1_000_000, false, Some(12.5)),
            ("gpt-5-mini-2025-08-07", 1_000_000, 1_000_000, false, Some(2.25)),
            // The longest listed prefix decides: Opus 4.5 is not priced as Opus 4.
            ("claude-opus-4-5-20251101", 1_000_000, 1_000_000, false, Some(30.0)),
            ("claude-opus-4-20250514", 1_000_000, 1_000_000, false, Some(90.0)),
            ("gpt-4o-2024-08-06", 2_000, 500, false, Some(0.01)),
            ("gpt-4o-mini-2024-07-18", 1_000_000, 0, false, Some(0.15)),
            ("claude-3-5-haiku", 1_000_000, 1_000_000, true, Some(2.4)),
            ("GPT-4O", 1_000_000, 0, false, Some(2.5)),
            ("my-own-model", 1, 1, false, None),
        ];
        for (model, input, output, batch, expected) in cases {
            let cost = table.find(model).map(|p| p.cost(input, output, batch));
            match (cost, expected) {
                (Some(cost), Some(expected)) => assert!((cost - expected).abs() < 1e-9, "{model}: {cost}"),
                (cost, expected) => assert_eq!(cost, expected, "{model}"),
            }
        }
        assert_eq!(table.as_of, "2025-11-24");
        assert!(!table.sources.is_empty());
    }

    #[test]
    fn a_bad_price_table_is_refused_with_a_reason() {
        let cases = [
            (
                "as_of = \"x\"\nsources = []\n[[model]]\nname = \"a\"\nprovider = \"p\"\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0\n",
                "prices of 0 or more",
            ),
            (
                "as_of = \"x\"\nsources = []\n[[model]]\nname = \"a\"\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\nbatch_discount = 1.0\n",
                "batch_discount",
            ),
            (
                "as_of = \"x\"\nsources = []\n[[model]]\nname = \"a\"\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n[[model]]\nname = \"a\"\nprovider = \"p\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n",
                "listed twice",
            ),
            ("as_of = \"x\"\n", "missing field"),
            ("not toml at all [", "invalid price table"),
        ];
        for (text, reason) in cases {
            let error = PriceTable::parse(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        }
    }
}
