//! Sharding of row-mapping stages: --shard-index/--num-shards, falling back to the
//! environment of the workflow engine that started the task; part-file naming that
//! readers accept (see [`crate::parts`]).
//!
//! Without the flags, a task's shard comes from:
//! - a Slurm job array: index = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN (divided by
//!   SLURM_ARRAY_TASK_STEP), count = SLURM_ARRAY_TASK_COUNT, so `--array=1-N` and
//!   `--array=0-(N-1)` both run shards 0..N-1;
//! - a Kubernetes Indexed Job: index = JOB_COMPLETION_INDEX, count = RLHF_NUM_SHARDS
//!   (Kubernetes does not pass the completion count; set it from `.spec.completions`);
//! - otherwise shard 0 of 1.
//!
//! An explicit `--num-shards 1` means unsharded whatever the environment says.

use clap::Args;

use crate::error::{CoreError, Result};

/// Flags of stages that map over rows.
#[derive(Debug, Clone, Args)]
pub struct ShardArgs {
    /// This process's shard, 0-based. Default: from a Slurm job array
    /// (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX), else 0.
    #[arg(long, value_name = "I")]
    pub shard_index: Option<usize>,
    /// Number of shards the rows are split into (round-robin by row order). Default:
    /// SLURM_ARRAY_TASK_COUNT in a Slurm job array, else RLHF_NUM_SHARDS, else 1.
    #[arg(long, value_name = "N")]
    pub num_shards: Option<usize>,
}

/// A resolved shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

fn parse(name: &str, value: &str) -> Result<usize> {
    value.trim().parse().map_err(|_| {
        CoreError::Usage(format!(
            "{name}={value} is not a shard number (expected a non-negative integer)"
        ))
    })
}

impl ShardArgs {
    /// Resolves index and count (flags, then the environment) and checks the index is
    /// below the count.
    pub fn resolve(&self) -> Result<Shard> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// [`ShardArgs::resolve`] with the environment given as a lookup (for tests).
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let get = |k: &str| env(k).map(|v| parse(k, &v)).transpose();
        let (env_index, env_count, source) = if let Some(id) = get("SLURM_ARRAY_TASK_ID")? {
            let min = get("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = get("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            if id < min || (id - min) % step != 0 {
                return Err(CoreError::Usage(format!(
                    "SLURM_ARRAY_TASK_ID={id} is not on the array's grid (min {min}, step \
                     {step}); give --shard-index"
                )));
            }
            (
                Some((id - min) / step),
                get("SLURM_ARRAY_TASK_COUNT")?,
                "Slurm job array",
            )
        } else if let Some(i) = get("JOB_COMPLETION_INDEX")? {
            let count = get("RLHF_NUM_SHARDS")?;
            if count.is_none() && self.num_shards.is_none() {
                // Every pod would otherwise write the whole output, unsharded, to one file.
                return Err(CoreError::Usage(format!(
                    "JOB_COMPLETION_INDEX={i} (a Kubernetes Indexed Job) but no shard count: \
                     set RLHF_NUM_SHARDS to the Job's completions, or give --num-shards"
                )));
            }
            (Some(i), count, "Kubernetes Indexed Job")
        } else {
            (None, get("RLHF_NUM_SHARDS")?, "environment")
        };
        let count = self.num_shards.or(env_count).unwrap_or(1);
        let index = match self.shard_index {
            Some(i) => i,
            None if count > 1 => env_index.unwrap_or(0),
            None => 0,
        };
        if count == 0 || index >= count {
            return Err(CoreError::Usage(format!(
                "shard index {index} is out of range for {count} shard(s) (index from {}, \
                 count from {})\n  hint: shards are numbered 0..N-1; in a Slurm array any \
                 numbering works when --num-shards is left to SLURM_ARRAY_TASK_COUNT",
                if self.shard_index.is_some() {
                    "--shard-index"
                } else {
                    source
                },
                if self.num_shards.is_some() {
                    "--num-shards"
                } else {
                    source
                },
            )));
        }
        if count > 1 && self.shard_index.is_none() {
            tracing::info!(index, count, "shard from the {source}");
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The whole dataset in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// True when row `i` (in input order) belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// Checks `--out` suits this shard (a file when unsharded, a folder for part files
    /// otherwise) and returns this shard's output file ([`Shard::output_path`]).
    pub fn output_for(&self, out: &std::path::Path) -> Result<std::path::PathBuf> {
        if self.count > 1 && out.is_file() {
            return Err(CoreError::Usage(format!(
                "--out {} is a file, but with --num-shards {} it must be a folder for part files",
                out.display(),
                self.count
            )));
        }
        if self.count == 1 && out.is_dir() {
            return Err(CoreError::Usage(format!(
                "--out {} is a folder; an unsharded run writes one file (give a file name)",
                out.display()
            )));
        }
        Ok(self.output_path(out))
    }

    /// The output file for this shard: `path` itself when unsharded, otherwise a part file
    /// `part-00001-of-00004.parquet` inside the folder `path` (readers take the folder).
    pub fn output_path(&self, path: &std::path::Path) -> std::path::PathBuf {
        if self.count == 1 {
            path.to_path_buf()
        } else {
            path.join(crate::parts::part_name(self.index, self.count))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_rows() {
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        for i in 0..30 {
            assert_eq!(shards.iter().filter(|s| s.owns(i)).count(), 1);
        }
        let bad = ShardArgs {
            shard_index: Some(3),
            num_shards: Some(3),
        };
        assert!(bad.resolve_with(|_| None).is_err());
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn slurm_arrays_numbered_from_one_run_every_shard() {
        let none = ShardArgs {
            shard_index: None,
            num_shards: None,
        };
        let mut seen = Vec::new();
        for id in ["1", "2", "3"] {
            let vars: &'static [(&str, &str)] = Box::leak(Box::new([
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ]));
            seen.push(none.resolve_with(env(vars)).unwrap());
        }
        assert_eq!(
            seen,
            (0..3)
                .map(|index| Shard { index, count: 3 })
                .collect::<Vec<_>>()
        );
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "14"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(
            none.resolve_with(stepped).unwrap(),
            Shard { index: 2, count: 3 }
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1"), ("RLHF_NUM_SHARDS", "4")]);
        assert_eq!(
            none.resolve_with(k8s).unwrap(),
            Shard { index: 1, count: 4 }
        );
        let unsharded = ShardArgs {
            shard_index: None,
            num_shards: Some(1),
        };
        let array = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(unsharded.resolve_with(array).unwrap(), Shard::ALL);
        let garbage = env(&[("SLURM_ARRAY_TASK_ID", "x")]);
        assert!(matches!(
            none.resolve_with(garbage),
            Err(CoreError::Usage(_))
        ));
        assert_eq!(none.resolve_with(|_| None).unwrap(), Shard::ALL);
    }

    #[test]
    fn output_must_be_a_folder_when_sharded_and_a_file_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.parquet");
        std::fs::write(&file, b"").unwrap();
        let two = Shard { index: 1, count: 2 };
        assert!(
            matches!(two.output_for(&file), Err(CoreError::Usage(m)) if m.contains("must be a folder"))
        );
        assert_eq!(
            two.output_for(dir.path()).unwrap(),
            dir.path().join("part-00001-of-00002.parquet")
        );
        assert!(
            matches!(Shard::ALL.output_for(dir.path()), Err(CoreError::Usage(m)) if m.contains("is a folder"))
        );
        assert_eq!(Shard::ALL.output_for(&file).unwrap(), file);
    }
}
