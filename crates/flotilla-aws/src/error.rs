//! Errors: [`AwsError`] for setting the provider up, and the one pure function, [`classify`], that
//! sorts every SDK failure into a `flotilla_engine::ports::ErrorKind`.

use std::path::PathBuf;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flotilla_engine::ports::{ErrorKind, PortError};

/// Why the AWS provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The baseline cache file exists but cannot be read or parsed.
    #[error(
        "cannot read the baseline outputs in {}: {message}; fix or delete the file and run `flotilla baseline up` again",
        path.display()
    )]
    BaselineFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Outputs the command needs are neither in the cache file nor in the config.
    #[error(
        "the AWS baseline is incomplete: missing {} (looked in {} and the [aws] section of flotilla.toml); \
         run `flotilla baseline up` to create the baseline, or set them under [aws]",
        missing.join(", "), path.display()
    )]
    MissingBaseline {
        /// The missing outputs, by their config key.
        missing: Vec<&'static str>,
        /// The cache file that was consulted.
        path: PathBuf,
    },
    /// Outputs are present but cannot be what they name (not an ARN, or unresolved template
    /// text): the cache was written by something else, or by hand.
    #[error(
        "the AWS baseline outputs (in {} or the [aws] section of flotilla.toml) are malformed: {}; \
         run `flotilla baseline up` again to rewrite the cache from the stack, or fix them under [aws]",
        path.display(), problems.join("; ")
    )]
    MalformedBaseline {
        /// Each malformed output, with its value.
        problems: Vec<String>,
        /// The cache file that was consulted.
        path: PathBuf,
    },
    /// The settings break AWS limits or contradict each other.
    #[error("invalid AWS settings: {}", problems.join("; "))]
    Settings {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// No region is configured anywhere.
    #[error(
        "no AWS region configured; set [aws] region in flotilla.toml, or AWS_REGION, or a region in your AWS profile"
    )]
    NoRegion,
    /// A Lambda environment variable is missing or malformed.
    #[error("reaper Lambda environment: {0}")]
    LambdaEnv(String),
    /// The Lambda runtime loop failed.
    #[error("reaper Lambda runtime failed: {0}")]
    LambdaRuntime(String),
}

/// The shape of one SDK failure, with what [`classify`] needs and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The request could not even be built (bad input or a bug).
    Construction,
    /// The SDK's own timeout fired.
    Timeout,
    /// The request could not be sent or no response came back.
    Dispatch {
        /// A connect or read timeout.
        timeout: bool,
        /// An I/O error (connection refused, reset, DNS).
        io: bool,
    },
    /// A response came back but could not be parsed.
    Unparseable {
        /// Its HTTP status.
        status: Option<u16>,
    },
    /// The service answered with an error.
    Service {
        /// The AWS error code, e.g. `ThrottlingException`.
        code: Option<&'a str>,
        /// The HTTP status.
        status: Option<u16>,
    },
}

/// Sorts an SDK failure into the engine's error kinds.
///
/// Error codes decide first (the same condition has different codes across ECS, ELBv2 and SSM);
/// an unknown code falls back to the HTTP status. Modelled on vector's `is_retriable_error`.
pub fn classify(failure: Failure<'_>) -> ErrorKind {
    match failure {
        Failure::Construction => ErrorKind::Invalid,
        Failure::Timeout => ErrorKind::Transient,
        Failure::Dispatch { timeout: true, .. } => ErrorKind::Transient,
        Failure::Dispatch { .. } => ErrorKind::Unavailable,
        Failure::Unparseable { .. } => ErrorKind::Transient,
        Failure::Service { code, status } => code
            .and_then(classify_code)
            .unwrap_or_else(|| classify_status(status)),
    }
}

fn classify_code(code: &str) -> Option<ErrorKind> {
    use ErrorKind::*;
    Some(match code {
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "ProvisionedThroughputExceededException"
        | "SlowDown"
        | "EC2ThrottledException"
        | "BandwidthLimitExceeded"
        | "ThrottledOperation" => Throttled,
        "InternalFailure"
        | "InternalError"
        | "InternalServerError"
        | "InternalServerErrorException"
        | "InternalServiceError"
        | "ServerException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "PriorRequestNotComplete"
        | "IDPCommunicationError"
        | "TransientError" => Transient,
        "ParameterNotFound"
        | "ParameterVersionNotFound"
        | "ServiceNotFoundException"
        | "ServiceNotActiveException"
        | "ClusterNotFoundException"
        | "TargetGroupNotFound"
        | "RuleNotFound"
        | "ListenerNotFound"
        | "LoadBalancerNotFound"
        | "RepositoryNotFoundException"
        | "ImageNotFoundException"
        | "ResourceNotFoundException"
        | "ObjectNotFoundException"
        | "NoSuchEntity"
        | "NotFound"
        | "NotFoundException" => NotFound,
        "ResourceInUse"
        | "ResourceInUseException"
        | "ParameterAlreadyExists"
        | "PriorityInUse"
        | "DuplicateTargetGroupName"
        | "DuplicateListener"
        | "DuplicateLoadBalancerName"
        | "ConcurrentModificationException"
        | "ConflictException"
        | "TooManyUpdates"
        | "ResourceAlreadyExistsException"
        | "OperationAbortedException"
        | "UpdateInProgressException" => Conflict,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "UnauthorizedException"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "InvalidSignatureException"
        | "MissingAuthenticationToken"
        | "AuthFailure"
        | "OptInRequired" => AccessDenied,
        "ValidationError"
        | "ValidationException"
        | "InvalidParameterException"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "InvalidConfigurationRequest"
        | "InvalidLoadBalancerAction"
        | "InvalidTarget"
        | "IncompatibleProtocols"
        | "TooManyRules"
        | "TooManyTargetGroups"
        | "TooManyTargets"
        | "TooManyTags"
        | "TooManyActions"
        | "TooManyUniqueTargetGroupsPerLoadBalancer"
        | "LimitExceededException"
        | "ParameterLimitExceeded"
        | "HierarchyLevelLimitExceededException"
        | "HierarchyTypeMismatchException"
        | "UnsupportedFeatureException"
        | "PlatformUnknownException"
        | "PlatformTaskDefinitionIncompatibilityException"
        | "ClientException"
        | "OperationNotPermitted"
        | "SerializationException"
        | "MalformedQueryString" => Invalid,
        _ => return None,
    })
}

fn classify_status(status: Option<u16>) -> ErrorKind {
    match status {
        Some(429) => ErrorKind::Throttled,
        Some(401 | 403) => ErrorKind::AccessDenied,
        Some(404) => ErrorKind::NotFound,
        Some(409) => ErrorKind::Conflict,
        Some(s) if s >= 500 => ErrorKind::Transient,
        Some(_) => ErrorKind::Invalid,
        None => ErrorKind::Transient,
    }
}

/// The [`Failure`] shape of an SDK error.
pub(crate) fn failure_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Failure<'_> {
    match err {
        SdkError::ConstructionFailure(_) => Failure::Construction,
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(d) => Failure::Dispatch {
            timeout: d.is_timeout(),
            io: d.is_io(),
        },
        SdkError::ResponseError(r) => Failure::Unparseable {
            status: Some(r.raw().status().as_u16()),
        },
        SdkError::ServiceError(s) => Failure::Service {
            code: s.err().code(),
            status: Some(s.raw().status().as_u16()),
        },
        _ => Failure::Unparseable { status: None },
    }
}

/// The AWS error code of an SDK error, if the service sent one.
pub(crate) fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// Turns an SDK error into a [`PortError`] for `operation` on `resource`.
pub(crate) fn port_error<E>(
    operation: &str,
    resource: &str,
    err: SdkError<E, HttpResponse>,
) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = classify(failure_of(&err));
    let message = match &err {
        SdkError::ServiceError(s) => {
            let e = s.err();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => DisplayErrorContext(&err).to_string(),
            }
        }
        _ => DisplayErrorContext(&err).to_string(),
    };
    PortError::new(kind, operation, resource, with_hint(kind, message))
}

/// Adds what to do next for the kinds where the AWS message does not say it.
fn with_hint(kind: ErrorKind, message: String) -> String {
    match kind {
        ErrorKind::AccessDenied => format!(
            "{message}; the credentials in use lack a permission: `flotilla aws deployer-policy` prints the policy a deployer needs"
        ),
        ErrorKind::Unavailable => format!(
            "{message}; AWS could not be reached: check the network, the region and AWS_ENDPOINT_URL"
        ),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind::*;

    #[test]
    fn classification_table() {
        let svc = |code: &'static str, status: u16| Failure::Service {
            code: Some(code),
            status: Some(status),
        };
        let table: &[(Failure<'_>, ErrorKind)] = &[
            (svc("ThrottlingException", 400), Throttled),
            (svc("Throttling", 400), Throttled),
            (svc("TooManyRequestsException", 400), Throttled),
            (svc("RequestLimitExceeded", 503), Throttled),
            (svc("ServerException", 500), Transient),
            (svc("InternalFailure", 500), Transient),
            (svc("ServiceUnavailable", 503), Transient),
            (svc("ParameterNotFound", 400), NotFound),
            (svc("ServiceNotFoundException", 400), NotFound),
            (svc("TargetGroupNotFound", 400), NotFound),
            (svc("RuleNotFound", 400), NotFound),
            (svc("ObjectNotFoundException", 400), NotFound),
            (svc("ResourceInUse", 400), Conflict),
            (svc("ParameterAlreadyExists", 400), Conflict),
            (svc("PriorityInUse", 400), Conflict),
            (svc("DuplicateTargetGroupName", 400), Conflict),
            (svc("TooManyUpdates", 400), Conflict),
            (svc("AccessDeniedException", 400), AccessDenied),
            (svc("AccessDenied", 403), AccessDenied),
            (svc("UnrecognizedClientException", 400), AccessDenied),
            (svc("ExpiredToken", 400), AccessDenied),
            (svc("ValidationError", 400), Invalid),
            (svc("InvalidParameterException", 400), Invalid),
            (svc("TooManyRules", 400), Invalid),
            (svc("ClientException", 400), Invalid),
            // Unknown codes fall back to the status.
            (svc("SomethingNew", 503), Transient),
            (svc("SomethingNew", 429), Throttled),
            (svc("SomethingNew", 403), AccessDenied),
            (svc("SomethingNew", 404), NotFound),
            (svc("SomethingNew", 409), Conflict),
            (svc("SomethingNew", 400), Invalid),
            (
                Failure::Service {
                    code: None,
                    status: Some(500),
                },
                Transient,
            ),
            (
                Failure::Service {
                    code: None,
                    status: None,
                },
                Transient,
            ),
            (Failure::Timeout, Transient),
            (
                Failure::Dispatch {
                    timeout: true,
                    io: false,
                },
                Transient,
            ),
            (
                Failure::Dispatch {
                    timeout: false,
                    io: true,
                },
                Unavailable,
            ),
            (
                Failure::Dispatch {
                    timeout: false,
                    io: false,
                },
                Unavailable,
            ),
            (Failure::Unparseable { status: Some(200) }, Transient),
            (Failure::Construction, Invalid),
        ];
        for (failure, want) in table {
            assert_eq!(classify(*failure), *want, "{failure:?}");
        }
    }

    #[test]
    fn retryable_kinds_match_the_engine() {
        assert!(classify(Failure::Timeout).is_retryable());
        assert!(!classify(Failure::Construction).is_retryable());
    }

    #[test]
    fn hints_say_what_to_do() {
        assert!(with_hint(AccessDenied, "x".into()).contains("deployer-policy"));
        assert!(with_hint(Unavailable, "x".into()).contains("AWS_ENDPOINT_URL"));
        assert_eq!(with_hint(NotFound, "x".into()), "x");
    }
}
