//! The scheduler's request errors and their one conversion to `tonic::Status`.

use std::time::Duration;

use tonic::{Code, Status};

use crate::access::AccessError;
use crate::book::BookError;
use crate::identity::AuthError;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Book(#[from] BookError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("lease {lease} is another user's: only its owner and operators may see it")]
    NotYours { lease: String },
    #[error("the agent of node {node} is not connected; lease {lease} was not started")]
    AgentGone { node: String, lease: String },
    #[error("the executor of lease {lease} on node {node} did not start: {reason}")]
    StartFailed {
        lease: String,
        node: String,
        reason: String,
    },
    #[error(
        "the executor of lease {lease} on node {node} was not ready within {waited:?}; the lease is freed"
    )]
    StartTimeout {
        lease: String,
        node: String,
        waited: Duration,
    },
}

impl RequestError {
    pub fn code(&self) -> Code {
        match self {
            Self::Auth(AuthError::Spawn { .. }) => Code::Internal,
            Self::Auth(AuthError::Timeout { .. } | AuthError::Busy { .. }) => Code::Unavailable,
            Self::Auth(_) => Code::Unauthenticated,
            Self::Book(b) => match b {
                BookError::BadRequest(_) => Code::InvalidArgument,
                BookError::Unschedulable { .. } => Code::ResourceExhausted,
                BookError::UnknownLease(_) => Code::NotFound,
                BookError::NotOwner { .. } | BookError::NotHolder { .. } => Code::PermissionDenied,
                BookError::UnknownNode(_) => Code::FailedPrecondition,
                BookError::NotPending { .. } => Code::Aborted,
                BookError::Placement(_) => Code::Internal,
                BookError::SameRequest(_) => Code::AlreadyExists,
            },
            Self::Access(AccessError::OverCap { .. }) => Code::ResourceExhausted,
            Self::Access(AccessError::NotOperator { .. }) | Self::NotYours { .. } => {
                Code::PermissionDenied
            }
            Self::AgentGone { .. } => Code::Unavailable,
            Self::StartFailed { .. } => Code::Aborted,
            Self::StartTimeout { .. } => Code::DeadlineExceeded,
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_class_has_its_code_and_message() {
        let s = Status::from(RequestError::Book(BookError::Unschedulable {
            cores: 4,
            memory_mib: 1,
            gpus: 0,
            reason: "fit rejected 2 node(s)".into(),
        }));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("fit rejected 2 node(s)"));
        let s = Status::from(RequestError::Book(BookError::NotOwner {
            lease: "x".into(),
            owner: 1,
            uid: 2,
        }));
        assert_eq!(s.code(), Code::PermissionDenied);
        let s = Status::from(RequestError::Auth(AuthError::Rejected("Expired".into())));
        assert_eq!(s.code(), Code::Unauthenticated);
        let s = Status::from(RequestError::Book(BookError::UnknownLease("x".into())));
        assert_eq!(s.code(), Code::NotFound);
    }
}
