//! Sharding of row-mapping stages: --shard-index/--num-shards, with the index falling back
//! to SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX; part-file naming that readers accept.

use clap::Args;

use crate::error::{CoreError, Result};

/// Flags of stages that map over rows.
#[derive(Debug, Clone, Args)]
pub struct ShardArgs {
    /// This process's shard (0-based). Default: SLURM_ARRAY_TASK_ID, then
    /// JOB_COMPLETION_INDEX, then 0.
    #[arg(long)]
    pub shard_index: Option<usize>,
    /// Number of shards the rows are split into (round-robin by row order).
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
}

/// A resolved shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl ShardArgs {
    /// Resolves the index (flag, then environment) and checks it is below the count.
    pub fn resolve(&self) -> Result<Shard> {
        let from_env = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
            .iter()
            .find_map(|k| std::env::var(k).ok().map(|v| (k, v)));
        let index = match (self.shard_index, from_env) {
            (Some(i), _) => i,
            (None, Some((k, v))) if self.num_shards > 1 => v.trim().parse().map_err(|_| {
                CoreError::Usage(format!(
                    "{k}={v} is not a shard index (expected an integer)"
                ))
            })?,
            _ => 0,
        };
        if self.num_shards == 0 || index >= self.num_shards {
            return Err(CoreError::Usage(format!(
                "shard index {index} is out of range for --num-shards {}",
                self.num_shards
            )));
        }
        Ok(Shard {
            index,
            count: self.num_shards,
        })
    }
}

impl Shard {
    /// The whole dataset in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// True when row `i` (in input order) belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// The output file for this shard: `path` itself when unsharded, otherwise a part file
    /// `part-00001-of-00004.parquet` inside the folder `path` (readers take the folder).
    pub fn output_path(&self, path: &std::path::Path) -> std::path::PathBuf {
        if self.count == 1 {
            path.to_path_buf()
        } else {
            path.join(format!(
                "part-{:05}-of-{:05}.parquet",
                self.index, self.count
            ))
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
            num_shards: 3,
        };
        assert!(bad.resolve().is_err());
    }
}
