//! Example app placeholder; the host issue fills it in.
fn main() {}
