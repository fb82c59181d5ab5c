//! What the SPANK plugin tells the node agent, and how it is framed.
//!
//! The plugin (inside slurmstepd, no threads, no async runtime) opens the agent's Unix socket,
//! writes one [`PluginMessage`] as a JSON line, and reads one [`AgentReply`] JSON line back, all
//! within a deadline. One message per connection keeps the plugin side trivial and stateless.
//! Every message carries [`PROTOCOL_VERSION`]; an agent answers a version it does not know with an
//! error rather than guessing.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::CpuSet;

/// The version of the plugin-agent protocol this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest message either side accepts, in bytes: a bound for a reader that must not be made
/// to buffer without limit.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A Slurm step id, with Slurm's special values named.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(pub u32);

impl StepId {
    /// `SLURM_PENDING_STEP`.
    pub const PENDING: StepId = StepId(0xffff_fffd);
    /// `SLURM_EXTERN_CONT`: the extern step that holds the job's allocation while it lives.
    pub const EXTERN: StepId = StepId(0xffff_fffc);
    /// `SLURM_BATCH_SCRIPT`: the batch script's step.
    pub const BATCH: StepId = StepId(0xffff_fffb);
    /// `SLURM_INTERACTIVE_STEP`.
    pub const INTERACTIVE: StepId = StepId(0xffff_fffa);
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::PENDING => f.write_str("pending"),
            Self::EXTERN => f.write_str("extern"),
            Self::BATCH => f.write_str("batch"),
            Self::INTERACTIVE => f.write_str("interactive"),
            StepId(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Debug for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StepId({self})")
    }
}

/// What a job step was given on this node, reported before its tasks start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepAllocation {
    pub job_id: u32,
    pub step_id: StepId,
    pub uid: u32,
    /// The Slurm node name (`n1`), which is also the agent's `--node`.
    pub node: String,
    /// OS CPU ids, from the job's cgroup `cpuset.cpus` (not Slurm's abstract core ids).
    pub cpus: CpuSet,
    /// The step's memory limit in MiB; `None` when Slurm set none.
    pub memory_mib: Option<u64>,
    /// GPU indices the step got (from `CUDA_VISIBLE_DEVICES`/the devices cgroup when GRES exist).
    pub gpus: Vec<u32>,
    /// The job's `--harvest` choice: `false` means no functions on this node while the job runs.
    pub harvest: bool,
}

/// A message from the SPANK plugin to the node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginMessage {
    /// A step is about to start its tasks. The agent answers once the step's resources are free
    /// of functions.
    StepStart(StepAllocation),
    /// A step ended; its resources return to the pool unless another step of the job holds them.
    StepEnd {
        job_id: u32,
        step_id: StepId,
        node: String,
    },
    /// The whole job ended on this node (the extern step's or batch step's exit).
    JobEnd { job_id: u32, node: String },
}

/// The envelope that carries the protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

/// The agent's answer to one [`PluginMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    pub ok: bool,
    /// What went wrong, for the plugin to log through Slurm's logger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentReply {
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
        }
    }
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
        }
    }
}

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u32 },
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a message as one JSON line (with the trailing newline).
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body,
    })?;
    out.push(b'\n');
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes one JSON line (the trailing newline optional), checking the protocol version.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, FrameError> {
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge(line.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let version: VersionOnly = serde_json::from_slice(line)?;
    if version.v != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version.v });
    }
    let env: Envelope<T> = serde_json::from_slice(line)?;
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> PluginMessage {
        PluginMessage::StepStart(StepAllocation {
            job_id: 42,
            step_id: StepId::BATCH,
            uid: 1000,
            node: "n1".into(),
            cpus: [1].into_iter().collect(),
            memory_mib: Some(500),
            gpus: vec![],
            harvest: true,
        })
    }

    #[test]
    fn round_trips_as_one_json_line() {
        let bytes = encode(&start()).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("{\"v\":1,\"type\":\"step_start\""),
            "{text}"
        );
        assert_eq!(decode::<PluginMessage>(&bytes).unwrap(), start());
        let end = PluginMessage::JobEnd {
            job_id: 42,
            node: "n1".into(),
        };
        assert_eq!(
            decode::<PluginMessage>(&encode(&end).unwrap()).unwrap(),
            end
        );
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let line = br#"{"v":2,"type":"job_end","job_id":1,"node":"n1"}"#;
        assert!(matches!(
            decode::<PluginMessage>(line),
            Err(FrameError::Version { got: 2 })
        ));
        assert!(matches!(
            decode::<PluginMessage>(b"not json"),
            Err(FrameError::Json(_))
        ));
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<PluginMessage>(&big),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn step_ids_print_slurm_names() {
        assert_eq!(StepId::BATCH.to_string(), "batch");
        assert_eq!(StepId::EXTERN.to_string(), "extern");
        assert_eq!(StepId(3).to_string(), "3");
    }

    #[test]
    fn replies_carry_errors() {
        let r: AgentReply = decode(&encode(&AgentReply::error("boom")).unwrap()).unwrap();
        assert_eq!(r.error.as_deref(), Some("boom"));
        assert!(!r.ok);
    }
}
