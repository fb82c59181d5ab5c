//! The node agent's read-only query protocol (`<run-dir>/harvestd-<node>.query.sock`): one
//! request line, one reply line, framed with [`crate::step::encode`] like the plugin protocol.
//!
//! Here rather than in the agent so that `harvestd status` and `harvest doctor` (which must not
//! pull the agent's OS dependencies into the CLI) speak the same messages.

use serde::{Deserialize, Serialize};

use crate::NodeView;

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueryRequest {
    /// The node's resources by state.
    Status,
    /// The batch jobs the agent's ledger holds (what `harvest doctor` compares with Slurm).
    Jobs,
}

/// The agent's answer: `view` for [`QueryRequest::Status`], `jobs` for [`QueryRequest::Jobs`],
/// `error` when the request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<NodeView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<LedgerJob>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl QueryReply {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            view: None,
            jobs: None,
            error: Some(message.into()),
        }
    }
}

/// One batch job in an agent's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerJob {
    pub job_id: u32,
    /// The job's user, once a step or the cgroup tree said.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Step ids the plugin reported (Slurm's numbering; the batch step is 4294967291).
    #[serde(default)]
    pub steps: Vec<u32>,
    /// Found in Slurm's cgroup tree rather than reported by the plugin.
    #[serde(default)]
    pub recovered: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{decode, encode};

    #[test]
    fn requests_are_versioned_and_tagged() {
        assert_eq!(
            encode(&QueryRequest::Status).unwrap(),
            b"{\"v\":1,\"type\":\"status\"}\n"
        );
        let jobs = encode(&QueryRequest::Jobs).unwrap();
        assert_eq!(jobs, b"{\"v\":1,\"type\":\"jobs\"}\n");
        assert_eq!(decode::<QueryRequest>(&jobs).unwrap(), QueryRequest::Jobs);
    }

    #[test]
    fn a_reply_from_an_older_agent_without_jobs_still_decodes() {
        let r: QueryReply = decode(b"{\"v\":1,\"error\":\"x\"}\n").unwrap();
        assert_eq!(r, QueryReply::error("x"));
    }
}
