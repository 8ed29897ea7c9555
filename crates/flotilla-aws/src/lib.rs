//! flotilla-aws: see ARCHITECTURE.md. Being built.
#![forbid(unsafe_code)]
