//! Agent overhead benchmark (being written).

fn main() {}
