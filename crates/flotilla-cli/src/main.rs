//! The `flotilla` command line. Being built.
#![forbid(unsafe_code)]

fn main() {}
