//! The GPUs a step got, from the variables Slurm's GRES plugin puts in the job's environment.
//!
//! `SLURM_STEP_GPUS` and `SLURM_JOB_GPUS` hold the node's GPU indices (what NVML numbers);
//! `CUDA_VISIBLE_DEVICES` is only a fallback, because with device constraints it is renumbered
//! from 0 inside the job. A job without GRES has none of them: no GPUs.

/// The variables read, most specific first.
pub const GPU_VARS: [&str; 3] = ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"];

/// A GPU list that is neither indices nor empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{var}={value:?} is not a list of GPU indices like 0,2 (UUIDs are not supported); reporting no GPUs"
)]
pub struct GpuListError {
    pub var: &'static str,
    pub value: String,
}

/// The GPU indices from the first of [`GPU_VARS`] that is set, via `env`.
pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Vec<u32>, GpuListError> {
    for var in GPU_VARS {
        let Some(value) = env(var) else { continue };
        return parse_list(&value).ok_or(GpuListError { var, value });
    }
    Ok(Vec::new())
}

/// `0,2,3` (or `0-1,3`) as sorted, distinct indices. `NoDevFiles` (Slurm's "none") is empty.
fn parse_list(value: &str) -> Option<Vec<u32>> {
    let value = value.trim();
    if value.is_empty() || value == "NoDevFiles" {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for token in value.split(',') {
        match token.split_once('-') {
            None => out.push(token.trim().parse().ok()?),
            Some((lo, hi)) => {
                let (lo, hi): (u32, u32) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                if lo > hi || hi - lo > 1024 {
                    return None;
                }
                out.extend(lo..=hi);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_gres_means_no_gpus() {
        assert_eq!(from_env(env(&[])), Ok(vec![]));
    }

    #[test]
    fn slurm_indices_win_over_cuda_numbering() {
        let got = from_env(env(&[
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURM_JOB_GPUS", "2,3"),
        ]));
        assert_eq!(got, Ok(vec![2, 3]));
        let got = from_env(env(&[("SLURM_STEP_GPUS", "3"), ("SLURM_JOB_GPUS", "2,3")]));
        assert_eq!(got, Ok(vec![3]));
        assert_eq!(
            from_env(env(&[("CUDA_VISIBLE_DEVICES", "1,0-1")])),
            Ok(vec![0, 1])
        );
        assert_eq!(
            from_env(env(&[("CUDA_VISIBLE_DEVICES", "NoDevFiles")])),
            Ok(vec![])
        );
    }

    #[test]
    fn uuids_are_an_error_naming_the_variable() {
        let err = from_env(env(&[("CUDA_VISIBLE_DEVICES", "GPU-5a1b")])).unwrap_err();
        assert_eq!(err.var, "CUDA_VISIBLE_DEVICES");
        assert!(err.to_string().contains("GPU-5a1b"));
        assert!(from_env(env(&[("SLURM_JOB_GPUS", "3-1")])).is_err());
    }
}
