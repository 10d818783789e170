//! Latchkey's benchmarks and scale simulation. Each binary in `src/bin/` measures one thing and
//! writes its figures as Markdown and its pictures as SVG under `docs/`; the modules here are
//! what they share.

/// The `p`-quantile (0.0 to 1.0) of sorted samples, nearest rank. Panics on an empty slice.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize]
}

pub mod counted;
pub mod sim;
pub mod store_tap;
