//! The flotilla baseline: the CloudFormation stack every AWS deployment name runs on, generated
//! from typed Rust and serialised to JSON (no CDK, no Node), plus the contract the AWS provider
//! reads back from it and the IAM policy a deployer needs.
//!
//! Architecture invariant: this crate is pure. It does no I/O and calls no AWS API; the AWS
//! provider sends [`Template::to_compact_string`] to CloudFormation and parses the stack's outputs
//! with [`BaselineOutputs::from_stack_outputs`].
//!
//! Modules:
//! - [`cfn`]: a small typed CloudFormation model (resources, intrinsics, checkov skips) with a
//!   deterministic rendering.
//! - [`options`]: [`BaselineOptions`] and their validation, every problem at once.
//! - [`stack`]: [`build`], which turns options into the template.
//! - [`names`]: the baseline's resource names, derived from the deployment name.
//! - [`outputs`]: the stack output names (a contract) and [`BaselineOutputs`].
//! - [`contract`]: stack parameters, capabilities, logical ids and the reaper's environment.
//! - [`policy`]: typed IAM policy documents.
//! - [`deployer`]: the deployer IAM policy (`flotilla aws deployer-policy`).
#![forbid(unsafe_code)]

pub mod cfn;
pub mod contract;
pub mod deployer;
pub mod names;
pub mod options;
pub mod outputs;
pub mod policy;
pub mod stack;

pub use cfn::Template;
pub use contract::{ReaperCode, ReaperSettings};
pub use deployer::{DeployerPolicyOptions, deployer_policy};
pub use options::{
    AccessLogs, AlarmOptions, Architecture, BaselineOptions, NatMode, Notifications, OptionsError,
    ReaperOptions, SecretGrants, TlsMode, WafOptions,
};
pub use outputs::{BaselineOutputs, Mode, OutputsError};
pub use stack::build;
