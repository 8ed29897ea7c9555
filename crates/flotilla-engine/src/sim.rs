//! The simulated provider: every port in memory, a virtual clock, and deterministic fault
//! injection. A test tool, not a provider users can pick.
