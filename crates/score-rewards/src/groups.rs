//! Rollouts read as prompt groups: maximal runs of consecutive rows with the same prompt id
//! (the K samples of a prompt, as sample-rollouts writes them). A group is the unit of
//! sharding and, on CPU, of a reward-model forward batch, so scores do not depend on
//! which other rows share a shard or a batch. Rows are streamed file by file; only one
//! group is held at a time.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Result;
use arrow::array::RecordBatch;
use rlhf_core::error::CoreError;
use rlhf_core::parquet_io::Dataset;
use rlhf_core::records::{Record, RolloutRow};

/// One prompt's rollouts.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Position of the group in the dataset (0-based).
    pub index: usize,
    pub rows: Vec<RolloutRow>,
}

/// Streams the groups of a rollouts dataset, refusing duplicate rollout ids.
pub struct GroupReader<'a> {
    batches: Box<dyn Iterator<Item = rlhf_core::Result<(PathBuf, RecordBatch)>> + 'a>,
    pending: std::vec::IntoIter<(PathBuf, usize, RolloutRow)>,
    current: Vec<RolloutRow>,
    next_index: usize,
    seen: HashSet<String>,
    row_in_file: usize,
    file: Option<PathBuf>,
    done: bool,
}

impl<'a> GroupReader<'a> {
    /// Starts reading `ds` (already schema-checked by `Dataset::open`).
    pub fn new(ds: &'a Dataset) -> GroupReader<'a> {
        GroupReader {
            batches: Box::new(ds.batches()),
            pending: Vec::new().into_iter(),
            current: Vec::new(),
            next_index: 0,
            seen: HashSet::new(),
            row_in_file: 0,
            file: None,
            done: false,
        }
    }

    fn next_row(&mut self) -> Result<Option<RolloutRow>> {
        loop {
            if let Some((path, row_no, row)) = self.pending.next() {
                if !self.seen.insert(row.rollout_id.clone()) {
                    return Err(CoreError::BadInput {
                        path,
                        row: Some(row_no),
                        message: format!(
                            "rollout_id `{}` appears twice; scores are joined on it (hint: \
                             do not read the same rollouts twice, e.g. a file and its copy in one folder)",
                            row.rollout_id
                        ),
                    }
                    .into());
                }
                return Ok(Some(row));
            }
            match self.batches.next() {
                None => return Ok(None),
                Some(item) => {
                    let (path, batch) = item?;
                    if self.file.as_ref() != Some(&path) {
                        self.file = Some(path.clone());
                        self.row_in_file = 0;
                    }
                    let start = self.row_in_file;
                    let rows = RolloutRow::from_batch(&batch, &path)?;
                    self.row_in_file += rows.len();
                    self.pending = rows
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (path.clone(), start + i, r))
                        .collect::<Vec<_>>()
                        .into_iter();
                }
            }
        }
    }

    /// The next group, or None at the end.
    pub fn next_group(&mut self) -> Result<Option<Group>> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.next_row()? {
                Some(row) => {
                    let same = self
                        .current
                        .first()
                        .is_none_or(|first| first.prompt_id == row.prompt_id);
                    if same {
                        self.current.push(row);
                    } else {
                        let rows = std::mem::replace(&mut self.current, vec![row]);
                        return Ok(Some(self.emit(rows)));
                    }
                }
                None => {
                    self.done = true;
                    if self.current.is_empty() {
                        return Ok(None);
                    }
                    let rows = std::mem::take(&mut self.current);
                    return Ok(Some(self.emit(rows)));
                }
            }
        }
    }

    fn emit(&mut self, rows: Vec<RolloutRow>) -> Group {
        let index = self.next_index;
        self.next_index += 1;
        Group { index, rows }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rlhf_core::lineage::Lineage;
    use rlhf_core::schema::Artifact;

    pub(crate) fn rollout(
        prompt_id: &str,
        k: i32,
        response: &str,
        tokens: Vec<i32>,
        finish: &str,
    ) -> RolloutRow {
        let n = tokens.len();
        RolloutRow {
            rollout_id: format!("{prompt_id}-{k}"),
            prompt_id: prompt_id.into(),
            iteration: 1,
            sample_index: k,
            prompt: format!("Write a review of the {prompt_id}."),
            messages: None,
            response: response.into(),
            prompt_tokens: vec![1, 2, 3],
            response_tokens: tokens,
            logprobs: vec![-1.0; n],
            ref_logprobs: Some(vec![-1.5; n]),
            finish_reason: finish.into(),
            policy_id: "base".into(),
            seed: 7,
        }
    }

    #[test]
    fn groups_are_runs_of_one_prompt_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = Lineage::new("t", "0", Artifact::Rollouts);
        let a = vec![
            rollout("p0", 0, "x", vec![5], "eos"),
            rollout("p0", 1, "y", vec![6], "eos"),
            rollout("p1", 0, "z", vec![7], "eos"),
        ];
        let b = vec![
            rollout("p1", 1, "w", vec![8], "length"),
            rollout("p2", 0, "v", vec![9], "eos"),
        ];
        rlhf_core::parquet_io::write_records(&dir.path().join("part-0.parquet"), &a, &lineage)
            .unwrap();
        rlhf_core::parquet_io::write_records(&dir.path().join("part-1.parquet"), &b, &lineage)
            .unwrap();
        let ds = Dataset::open(dir.path(), Artifact::Rollouts).unwrap();
        let mut reader = GroupReader::new(&ds);
        let mut got = Vec::new();
        while let Some(g) = reader.next_group().unwrap() {
            got.push((
                g.index,
                g.rows
                    .iter()
                    .map(|r| r.rollout_id.clone())
                    .collect::<Vec<_>>(),
            ));
        }
        assert_eq!(
            got,
            vec![
                (0, vec!["p0-0".to_string(), "p0-1".into()]),
                (1, vec!["p1-0".into(), "p1-1".into()]),
                (2, vec!["p2-0".into()]),
            ]
        );
    }

    #[test]
    fn duplicate_rollout_ids_are_refused_with_file_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = Lineage::new("t", "0", Artifact::Rollouts);
        let rows = vec![
            rollout("p0", 0, "x", vec![5], "eos"),
            rollout("p1", 0, "x", vec![5], "eos"),
            rollout("p0", 0, "x", vec![5], "eos"),
        ];
        let file = dir.path().join("r.parquet");
        rlhf_core::parquet_io::write_records(&file, &rows, &lineage).unwrap();
        let ds = Dataset::open(&file, Artifact::Rollouts).unwrap();
        let mut reader = GroupReader::new(&ds);
        let mut err = None;
        for _ in 0..4 {
            if let Err(e) = reader.next_group() {
                err = Some(e.to_string());
                break;
            }
        }
        let err = err.expect("duplicate refused");
        assert!(
            err.contains("row 2") && err.contains("`p0-0` appears twice"),
            "{err}"
        );
    }
}
