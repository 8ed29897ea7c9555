//! Prints a baseline template, for linting and inspection before `flotilla baseline template`
//! exists: `cargo run -q -p flotilla-baseline --example print_template -- [https|http-only|per-az] [NAME]`.
//!
//! `https` requests an ACM certificate for `app.example.com`; `http-only` has no TLS; `per-az`
//! brings a certificate ARN and runs one NAT gateway per zone.

use std::process::ExitCode;

use flotilla_baseline::{BaselineOptions, NatMode, TlsMode, build};
use flotilla_core::DeploymentName;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("https");
    let name = match DeploymentName::new(args.get(1).map(String::as_str).unwrap_or("prod")) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let options = match mode {
        "https" => BaselineOptions::new(
            name,
            TlsMode::Acm {
                domain: "app.example.com".into(),
                alternative_names: Vec::new(),
                hosted_zone_id: None,
            },
        ),
        "http-only" => BaselineOptions::new(name, TlsMode::HttpOnly),
        "per-az" => {
            let mut o = BaselineOptions::new(
                name,
                TlsMode::Certificate {
                    certificate_arn: "arn:aws:acm:us-east-1:123456789012:certificate/example"
                        .into(),
                    domain: Some("app.example.com".into()),
                },
            );
            o.nat = NatMode::PerAz;
            o
        }
        other => {
            eprintln!("error: unknown mode {other:?}; use https, http-only or per-az");
            return ExitCode::from(2);
        }
    };
    match build(&options) {
        Ok(template) => {
            print!("{}", template.to_pretty_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
