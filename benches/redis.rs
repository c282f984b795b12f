//! Redis benchmarks (in progress).
fn main() {}
