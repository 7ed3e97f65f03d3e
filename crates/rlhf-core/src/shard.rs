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
