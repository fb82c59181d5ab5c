//! The CLI's failures and their exit codes, in one place (docs/cli.md lists them).

use harvest_core::invoke::ErrorCode;

use crate::failover::CallError;
use crate::identity::CredentialError;
use crate::invoke::InvokeError;
use crate::lease::LeaseError;
use crate::locate::LocateError;

/// Exit codes by failure class.
pub mod code {
    /// Success.
    pub const OK: u8 = 0;
    /// A local problem: unreadable input or library, bad configuration file, output not written.
    pub const LOCAL: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// No scheduler configured, or it cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// No credential could be made, or the scheduler refused it; or the lease's executor refused
    /// the lease secret (or the lease came without one: it is not the caller's).
    pub const AUTH: u8 = 4;
    /// No node has the idle resources asked for.
    pub const NO_RESOURCES: u8 = 5;
    /// The scheduler refused otherwise (no such lease, not yours, bad request, executor did
    /// not start).
    pub const REFUSED: u8 = 6;
    /// The executor could not be reached or stopped answering.
    pub const EXECUTOR: u8 = 7;
    /// The function crashed.
    pub const CRASHED: u8 = 10;
    /// The function ran past its timeout.
    pub const TIMEOUT: u8 = 11;
    /// The function exceeded the lease's memory.
    pub const OUT_OF_MEMORY: u8 = 12;
    /// The library has no function of that name.
    pub const NO_SUCH_FUNCTION: u8 = 13;
    /// The function's output did not fit its buffer.
    pub const OUTPUT_TOO_LARGE: u8 = 14;
    /// The lease was revoked while the function ran (and failover, if on, found no new one).
    pub const REVOKED: u8 = 15;
    /// Any other error the executor reported.
    pub const REMOTE_OTHER: u8 = 16;
    /// `harvest doctor`: at least one check failed.
    pub const DOCTOR_FAILED: u8 = 20;
    /// `harvest doctor`: no check failed, but at least one warned.
    pub const DOCTOR_WARNED: u8 = 21;
}

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("cannot make a munge credential: {0}")]
    Credential(#[from] CredentialError),
    #[error("invocation failed: {0}")]
    Invoke(#[from] InvokeError),
    #[error("invocation failed: LeaseRevoked: {revocation}{}", failover.as_deref().map(|f| format!("; {f}")).unwrap_or_default())]
    Revoked {
        revocation: crate::failover::Revocation,
        failover: Option<String>,
    },
    #[error("doctor: {failed} check(s) failed, {warned} warned")]
    Doctor { failed: usize, warned: usize },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl From<CallError> for CliError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Revoked {
                revocation,
                failover,
            } => Self::Revoked {
                revocation,
                failover,
            },
            CallError::Invoke(e) => Self::Invoke(e),
            CallError::Lease(e) => Self::Lease(e),
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Locate(LocateError::NoScheduler) => code::UNREACHABLE,
            Self::Locate(_) | Self::Io { .. } => code::LOCAL,
            Self::Credential(_) => code::AUTH,
            Self::Revoked { .. } => code::REVOKED,
            Self::Doctor { failed, .. } if *failed > 0 => code::DOCTOR_FAILED,
            Self::Doctor { .. } => code::DOCTOR_WARNED,
            Self::Lease(e) => match e {
                LeaseError::Unreachable { .. } => code::UNREACHABLE,
                LeaseError::Address { .. }
                | LeaseError::Library { .. }
                | LeaseError::Ca(_)
                | LeaseError::Tls { .. } => code::LOCAL,
                LeaseError::Credential(_) => code::AUTH,
                LeaseError::NoExecutor { .. } => code::EXECUTOR,
                LeaseError::Refused {
                    code: c, message, ..
                } => match c {
                    tonic::Code::Unauthenticated => code::AUTH,
                    tonic::Code::ResourceExhausted => code::NO_RESOURCES,
                    tonic::Code::Unavailable if message.contains("cannot reach") => {
                        code::UNREACHABLE
                    }
                    _ => code::REFUSED,
                },
            },
            Self::Invoke(e) => match e.code() {
                Some(ErrorCode::Crashed) => code::CRASHED,
                Some(ErrorCode::Timeout) => code::TIMEOUT,
                Some(ErrorCode::OutOfMemory) => code::OUT_OF_MEMORY,
                Some(ErrorCode::NoSuchFunction) => code::NO_SUCH_FUNCTION,
                Some(ErrorCode::OutputTooLarge) => code::OUTPUT_TOO_LARGE,
                Some(ErrorCode::LeaseRevoked) => code::REVOKED,
                Some(ErrorCode::Unauthorized) => code::AUTH,
                Some(_) => code::REMOTE_OTHER,
                None => match e {
                    InvokeError::Request(_) => code::LOCAL,
                    InvokeError::NoSecret { .. } => code::AUTH,
                    _ => code::EXECUTOR,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: ErrorCode) -> CliError {
        CliError::Invoke(InvokeError::Remote {
            id: 1,
            code,
            message: "m".into(),
        })
    }

    #[test]
    fn failure_classes_have_distinct_codes() {
        assert_eq!(remote(ErrorCode::Crashed).exit_code(), code::CRASHED);
        assert_eq!(remote(ErrorCode::Timeout).exit_code(), code::TIMEOUT);
        assert_eq!(
            remote(ErrorCode::OutOfMemory).exit_code(),
            code::OUT_OF_MEMORY
        );
        assert_eq!(remote(ErrorCode::Internal).exit_code(), code::REMOTE_OTHER);
        let refused = |c| {
            CliError::Lease(LeaseError::Refused {
                op: "acquire lease",
                code: c,
                message: String::new(),
            })
            .exit_code()
        };
        assert_eq!(refused(tonic::Code::ResourceExhausted), code::NO_RESOURCES);
        assert_eq!(refused(tonic::Code::Unauthenticated), code::AUTH);
        assert_eq!(refused(tonic::Code::PermissionDenied), code::REFUSED);
        assert_eq!(
            CliError::Locate(LocateError::NoScheduler).exit_code(),
            code::UNREACHABLE
        );
        assert_eq!(
            CliError::Doctor {
                failed: 1,
                warned: 3
            }
            .exit_code(),
            code::DOCTOR_FAILED
        );
        assert_eq!(
            CliError::Doctor {
                failed: 0,
                warned: 1
            }
            .exit_code(),
            code::DOCTOR_WARNED
        );
        // The remote error's message names its kind.
        assert!(remote(ErrorCode::Crashed).to_string().contains("crashed"));
    }

    #[test]
    fn a_refused_or_missing_lease_secret_is_an_auth_failure() {
        let refused = CliError::Invoke(InvokeError::Unauthorized {
            addr: "127.0.0.1:5".parse().unwrap(),
            message: "wrong proof".into(),
        });
        assert_eq!(refused.exit_code(), code::AUTH);
        assert!(
            refused.to_string().contains("refused the lease secret"),
            "{refused}"
        );
        let missing = CliError::Invoke(InvokeError::NoSecret { lease: "L1".into() });
        assert_eq!(missing.exit_code(), code::AUTH);
        assert!(missing.to_string().contains("L1"), "{missing}");
    }
}
