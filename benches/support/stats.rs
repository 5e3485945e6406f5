//! The percentile the benchmark programs report: nearest rank over sorted samples.

/// The `p`-th percentile (0–100) of `sorted`, by nearest rank; the default for no samples.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
