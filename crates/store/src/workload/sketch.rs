//! A mergeable quantile sketch with a relative-error bound: DDSketch's logarithmic bins
//! (Masson, Rim and Lee, VLDB 2019), kept small enough to store one per roll-up cell.
//!
//! A value `v` above [`MIN_VALUE`] falls in bin `k = ceil(log_γ v)` with γ = (1 + α) / (1 − α);
//! every value of bin `k` lies in (γ^(k−1), γ^k], and the bin's representative 2γ^k / (γ + 1)
//! is within α of each of them. Smaller values (zero, in practice) are counted apart and
//! represented by 0. Percentiles are nearest-rank, as [`crate::nearest_rank`] computes them
//! exactly: the bin holding the value of rank ceil(p × n / 100) is found by counting, so the
//! estimate is within α of that exact value; clamping it to the sketch's exact minimum and
//! maximum only brings it closer, and the first and last ranks are those exact values. Merging adds counts bin by bin, so a merge of sketches is the
//! sketch of all their values: roll-ups can be merged in any grouping.
//!
//! Written here rather than taken from `sketches-ddsketch` (0.4): that crate's quantile takes
//! the value at rank floor(q × (n − 1)), not nearest-rank (for two values its p95 is the
//! smaller one), which would put its answers outside the bound of the exact figures the
//! product used to give; and the bins' own encoding below is a few bytes a bin.

/// The relative error of every percentile the sketch gives: 1 %.
pub(crate) const RELATIVE_ACCURACY: f64 = 0.01;

/// Values at or below this are counted as zero.
const MIN_VALUE: f64 = 1e-9;

/// The largest bin key in absolute value that any finite value can have (f64::MAX has about
/// 35 900, MIN_VALUE about −1 050): a stored key beyond it is corrupt.
const KEY_LIMIT: i64 = 40_000;

/// The format byte that starts every encoded sketch.
const FORMAT: u8 = 1;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn key_of(value: f64, ln_gamma: f64) -> i32 {
    (value.ln() / ln_gamma).ceil() as i32
}

fn value_of(key: i32) -> f64 {
    let gamma = gamma();
    2.0 * gamma.powi(key) / (gamma + 1.0)
}

/// A sketch of non-negative values. Empty by default.
///
/// Another backend can build one from bin counts it computed itself ([`Sketch::bin_of`] says
/// which bin a value falls in, [`Sketch::from_bins`] takes the counts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    /// Values at or below [`MIN_VALUE`].
    zero: u64,
    /// The key of `bins[0]`.
    offset: i32,
    /// Counts per key from `offset` on.
    bins: Vec<u64>,
    /// All values.
    count: u64,
    /// The exact smallest and largest values (meaningless while `count` is 0).
    min: f64,
    max: f64,
}

impl Sketch {
    /// Values at or below this are counted in the zero bin.
    pub const ZERO_LIMIT: f64 = MIN_VALUE;

    /// The natural logarithm of the bins' base γ = (1 + α) / (1 − α), α being
    /// [`PERCENTILE_RELATIVE_ERROR`](crate::PERCENTILE_RELATIVE_ERROR).
    pub fn ln_gamma() -> f64 {
        gamma().ln()
    }

    /// The bin of `value`: `None` for the zero bin (at or below [`Sketch::ZERO_LIMIT`]), else
    /// `ceil(ln(value) / ln γ)` ([`Sketch::ln_gamma`]). A value computed elsewhere to land in a
    /// neighbouring bin (its logarithm rounded differently at a bin's edge) is still estimated
    /// within the bound, as it lies on the edge of both.
    pub fn bin_of(value: f64) -> Option<i32> {
        (value > MIN_VALUE).then(|| key_of(value, gamma().ln()))
    }

    /// The sketch of values counted elsewhere: `zero` values in the zero bin, the others as
    /// (bin, count) pairs in any order (a bin given twice adds up), with the exact smallest
    /// and largest value. Says what is wrong with counts no values could have (a bin no finite
    /// value has, bounds that are not finite, negative or out of order, more values than a
    /// count holds); empty when nothing is counted, whatever the bounds.
    pub fn from_bins(
        zero: u64,
        bins: impl IntoIterator<Item = (i32, u64)>,
        min: f64,
        max: f64,
    ) -> Result<Sketch, String> {
        let mut counted: Vec<(i32, u64)> = bins.into_iter().filter(|(_, count)| *count > 0).collect();
        if let Some((key, _)) = counted.iter().find(|(key, _)| i64::from(*key).abs() > KEY_LIMIT) {
            return Err(format!("bin key {key}"));
        }
        counted.sort_unstable();
        let mut sketch = Sketch::default();
        let mut total = zero;
        for (_, count) in &counted {
            total = total
                .checked_add(*count)
                .ok_or_else(|| "more values than a count holds".to_owned())?;
        }
        if total == 0 {
            return Ok(sketch);
        }
        if !(min.is_finite() && max.is_finite() && 0.0 <= min && min <= max) {
            return Err(format!("bounds {min} to {max}"));
        }
        if let (Some((low, _)), Some((high, _))) = (counted.first(), counted.last()) {
            sketch.reserve(*low, *high);
            for (key, count) in counted {
                sketch.bins[(key - sketch.offset) as usize] += count;
            }
        }
        (sketch.zero, sketch.count, sketch.min, sketch.max) = (zero, total, min, max);
        Ok(sketch)
    }

    /// Counts `value`, which the caller has checked is finite and not negative.
    pub(crate) fn add(&mut self, value: f64) {
        debug_assert!(value.is_finite() && value >= 0.0, "{value}");
        if value <= MIN_VALUE {
            self.zero += 1;
        } else {
            let key = key_of(value, gamma().ln());
            self.reserve(key, key);
            self.bins[(key - self.offset) as usize] += 1;
        }
        self.note(1, value, value);
    }

    fn note(&mut self, count: u64, min: f64, max: f64) {
        if self.count == 0 {
            (self.min, self.max) = (min, max);
        } else {
            self.min = self.min.min(min);
            self.max = self.max.max(max);
        }
        self.count = self.count.saturating_add(count);
    }

    /// Makes room for keys `low..=high`.
    fn reserve(&mut self, low: i32, high: i32) {
        if self.bins.is_empty() {
            self.offset = low;
            self.bins = vec![0; (high - low + 1) as usize];
            return;
        }
        let end = self.offset + self.bins.len() as i32;
        if low < self.offset {
            let mut bins = vec![0; (self.offset - low) as usize];
            bins.append(&mut self.bins);
            self.bins = bins;
            self.offset = low;
        }
        if high >= end {
            self.bins.resize((high - self.offset + 1) as usize, 0);
        }
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Sketch) {
        if other.count == 0 {
            return;
        }
        if !other.bins.is_empty() {
            let high = other.offset + other.bins.len() as i32 - 1;
            self.reserve(other.offset, high);
            let start = (other.offset - self.offset) as usize;
            for (mine, theirs) in self.bins[start..].iter_mut().zip(&other.bins) {
                *mine = mine.saturating_add(*theirs);
            }
        }
        self.zero = self.zero.saturating_add(other.zero);
        self.note(other.count, other.min, other.max);
    }

    /// How many values it holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The bins from the smallest value up, each as (representative value, count), the zero
    /// bin first; representatives clamped to the exact minimum and maximum.
    fn bins(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let zero = (self.zero > 0).then_some((0.0, self.zero));
        let (min, max) = (self.min, self.max);
        zero.into_iter().chain(
            self.bins
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(move |(i, count)| (value_of(self.offset + i as i32).clamp(min, max), *count)),
        )
    }

    /// The nearest-rank `percent`-th percentile, within [`RELATIVE_ACCURACY`] of the exact one;
    /// `None` when empty.
    pub(crate) fn nearest_rank(&self, percent: usize) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (u128::from(self.count) * percent as u128).div_ceil(100).max(1);
        // The first and last values are known exactly.
        if rank == 1 {
            return Some(self.min);
        }
        if rank >= u128::from(self.count) {
            return Some(self.max);
        }
        let mut seen = 0u128;
        for (value, count) in self.bins() {
            seen += u128::from(count);
            if seen >= rank {
                return Some(value);
            }
        }
        Some(self.max)
    }

    /// The sum over the values above `limit` of how far above it they are, each value taken as
    /// its bin's representative (so within [`RELATIVE_ACCURACY`] of each value's own excess
    /// plus the value's error).
    pub(crate) fn sum_above(&self, limit: f64) -> f64 {
        self.bins()
            .filter(|(value, _)| *value > limit)
            .map(|(value, count)| (value - limit) * count as f64)
            .sum()
    }

    /// The compact stored form: a format byte, the zero count, the non-empty bins as
    /// (key step, count) varints, then the exact minimum and maximum when anything is counted.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 3 * self.bins.len());
        out.push(FORMAT);
        put_varint(&mut out, self.zero);
        let filled = self.bins.iter().filter(|count| **count > 0).count();
        put_varint(&mut out, filled as u64);
        let mut previous = None;
        for (i, count) in self.bins.iter().enumerate().filter(|(_, count)| **count > 0) {
            let key = self.offset + i as i32;
            match previous {
                None => put_varint(&mut out, zigzag(i64::from(key))),
                Some(previous) => put_varint(&mut out, (key - previous) as u64),
            }
            put_varint(&mut out, *count);
            previous = Some(key);
        }
        if self.count > 0 {
            out.extend_from_slice(&self.min.to_le_bytes());
            out.extend_from_slice(&self.max.to_le_bytes());
        }
        out
    }

    /// Reads what [`Sketch::encode`] wrote; says what is wrong with anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Sketch, String> {
        let mut input = bytes;
        match take_byte(&mut input)? {
            FORMAT => {}
            other => return Err(format!("unknown sketch format {other}")),
        }
        let zero = take_varint(&mut input)?;
        let filled = take_varint(&mut input)?;
        if filled > 2 * KEY_LIMIT as u64 + 1 {
            return Err(format!("{filled} bins"));
        }
        let mut keys = Vec::with_capacity(filled as usize);
        let mut previous: Option<i64> = None;
        let mut total = zero;
        for _ in 0..filled {
            let step = take_varint(&mut input)?;
            let key = match previous {
                None => unzigzag(step),
                Some(_) if step == 0 || step > 2 * KEY_LIMIT as u64 => {
                    return Err(format!("a bin step of {step}"));
                }
                Some(previous) => previous + step as i64,
            };
            if key.abs() > KEY_LIMIT {
                return Err(format!("bin key {key}"));
            }
            let count = take_varint(&mut input)?;
            if count == 0 {
                return Err(format!("an empty bin {key}"));
            }
            total = total
                .checked_add(count)
                .ok_or_else(|| "more values than a count holds".to_owned())?;
            keys.push((key as i32, count));
            previous = Some(key);
        }
        let mut sketch = Sketch {
            zero,
            count: total,
            ..Sketch::default()
        };
        if total > 0 {
            let mut bound = || -> Result<f64, String> {
                let bytes: [u8; 8] = take(&mut input, 8)?.try_into().map_err(|_| "a short bound")?;
                Ok(f64::from_le_bytes(bytes))
            };
            let (min, max) = (bound()?, bound()?);
            if !(min.is_finite() && max.is_finite() && 0.0 <= min && min <= max) {
                return Err(format!("bounds {min} to {max}"));
            }
            (sketch.min, sketch.max) = (min, max);
        }
        if !input.is_empty() {
            return Err(format!("{} bytes after the sketch", input.len()));
        }
        if let (Some((low, _)), Some((high, _))) = (keys.first(), keys.last()) {
            sketch.reserve(*low, *high);
            for (key, count) in keys {
                sketch.bins[(key - sketch.offset) as usize] = count;
            }
        }
        Ok(sketch)
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if input.len() < n {
        return Err("the sketch ends early".to_owned());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_byte(input: &mut &[u8]) -> Result<u8, String> {
    let (first, rest) = input.split_first().ok_or_else(|| "the sketch ends early".to_owned())?;
    *input = rest;
    Ok(*first)
}

fn take_varint(input: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_byte(input)?;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err("a number too large".to_owned());
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number too long".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_sketch_reads_back_the_same() {
        let mut sketch = Sketch::default();
        assert_eq!(Sketch::decode(&sketch.encode()).unwrap(), sketch);
        for value in [0.0, 0.0, 1.0, 5.5, 5.6, 1000.0, 86_400_000.0, 1e-12] {
            sketch.add(value);
            assert_eq!(Sketch::decode(&sketch.encode()).unwrap(), sketch);
        }
        let mut only_zero = Sketch::default();
        only_zero.add(0.0);
        assert_eq!(Sketch::decode(&only_zero.encode()).unwrap(), only_zero);
    }

    #[test]
    fn a_merge_is_the_sketch_of_all_the_values() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..500 {
            let value = f64::from(i * 37 % 1000);
            if i % 3 == 0 { &mut a } else { &mut b }.add(value);
            all.add(value);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        for percent in [1, 50, 95, 99, 100] {
            assert_eq!(a.nearest_rank(percent), all.nearest_rank(percent));
        }
        assert_eq!(a.encode(), all.encode());
    }

    #[test]
    fn a_sketch_from_bins_counted_elsewhere_is_the_sketch_of_the_values() {
        let values = [0.0, 0.0, 1e-12, 0.5, 1.0, 5.5, 5.6, 1000.0, 1000.0, 86_400_000.0];
        let mut added = Sketch::default();
        let mut bins = Vec::new();
        let mut zero = 0;
        for value in values {
            added.add(value);
            match Sketch::bin_of(value) {
                Some(bin) => bins.push((bin, 1)),
                None => zero += 1,
            }
        }
        bins.reverse();
        let built = Sketch::from_bins(zero, bins, 0.0, 86_400_000.0).unwrap();
        assert_eq!(built, added);
        assert_eq!(Sketch::from_bins(0, [], f64::NAN, 0.0).unwrap(), Sketch::default());
        for (bins, min, max, expected) in [
            (vec![(50_000, 1)], 1.0, 1.0, "bin key"),
            (vec![(1, 1)], f64::NAN, 1.0, "bounds NaN"),
            (vec![(1, 1)], 2.0, 1.0, "bounds 2 to 1"),
            (vec![(1, u64::MAX), (2, 1)], 1.0, 2.0, "more values"),
        ] {
            let error = Sketch::from_bins(0, bins, min, max).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
