//! Pre-caching benchmark (issue 4 §6): work in progress.

fn main() {}
