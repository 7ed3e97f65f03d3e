//! The prompts a run samples from: read from the prompts artifact, filtered by split,
//! truncated by --max-prompts, split between shards (one prompt = one unit of work), and
//! tokenized (the file's `prompt_tokens` when its tokenizer is the model's, else the text
//! is encoded with the model's tokenizer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::error::CoreError;
use rlhf_core::parquet_io::Dataset;
use rlhf_core::records::{Message, PromptRow, Record};
use rlhf_core::schema::Artifact;
use rlhf_core::shard::Shard;
use rlhf_core::tokenizer::Tokenizer;

/// One prompt to sample from, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptJob {
    /// Position among the selected prompts (before sharding).
    pub index: usize,
    pub prompt_id: String,
    pub prompt: String,
    /// The prompt as chat messages, when it came as a conversation (copied to the rollouts).
    pub messages: Option<Vec<Message>>,
    pub tokens: Vec<i32>,
    /// File and 0-based row it was read from (for error messages).
    pub file: PathBuf,
    pub row: usize,
}

/// How the prompts were selected and tokenized (logged and kept in lineage).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Rows in the prompts dataset.
    pub rows_read: usize,
    /// Rows left out by --split.
    pub other_split: usize,
    /// Rows left out by --max-prompts.
    pub beyond_max: usize,
    /// Prompts selected over all shards.
    pub selected: usize,
    /// Prompts of this shard.
    pub in_shard: usize,
    /// Prompts whose stored tokens were used.
    pub stored_tokens: usize,
    /// Prompts encoded here.
    pub encoded: usize,
    /// The prompts file's tokenizer hash, when it records one.
    pub file_tokenizer: Option<String>,
}

/// Filters to apply while selecting prompts.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub split: Option<&'a str>,
    pub max_prompts: Option<usize>,
    pub shard: Option<Shard>,
}

/// Reads the prompts dataset and returns this shard's prompts in file order.
pub fn load(
    spec: &Path,
    filter: &Filter,
    tokenizer: &Tokenizer,
) -> Result<(Vec<PromptJob>, Selection)> {
    let ds = Dataset::open(spec, Artifact::Prompts)
        .with_context(|| format!("opening prompts {}", spec.display()))?;
    let file_tokenizer = ds.tokenizer_hash()?;
    let tokens_usable = file_tokenizer.as_deref() == Some(tokenizer.hash());
    let mut sel = Selection {
        file_tokenizer: file_tokenizer.clone(),
        ..Selection::default()
    };
    let mut jobs = Vec::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    let mut row_in_file = 0usize;
    let mut current_file: Option<PathBuf> = None;
    for item in ds.batches() {
        let (path, batch) = item?;
        if current_file.as_ref() != Some(&path) {
            current_file = Some(path.clone());
            row_in_file = 0;
        }
        for row in PromptRow::from_batch(&batch, &path)? {
            let here = row_in_file;
            row_in_file += 1;
            sel.rows_read += 1;
            if filter.split.is_some_and(|s| s != row.split) {
                sel.other_split += 1;
                continue;
            }
            if filter.max_prompts.is_some_and(|m| sel.selected >= m) {
                sel.beyond_max += 1;
                continue;
            }
            if let Some((f0, r0)) = seen.insert(row.prompt_id.clone(), (path.clone(), here)) {
                return Err(CoreError::BadInput {
                    path: path.clone(),
                    row: Some(here),
                    message: format!(
                        "prompt_id `{}` also appears in {} row {r0}; rollout ids would collide \
                         (hint: deduplicate the prompts file)",
                        row.prompt_id,
                        f0.display()
                    ),
                }
                .into());
            }
            let index = sel.selected;
            sel.selected += 1;
            if !filter.shard.unwrap_or(Shard::ALL).owns(index) {
                continue;
            }
            let tokens = match (&row.prompt_tokens, tokens_usable) {
                (Some(t), true) if !t.is_empty() => {
                    sel.stored_tokens += 1;
                    t.clone()
                }
                _ => {
                    sel.encoded += 1;
                    tokenizer.encode(&row.prompt, true)?
                }
            };
            if tokens.is_empty() {
                return Err(CoreError::BadInput {
                    path: path.clone(),
                    row: Some(here),
                    message: format!(
                        "prompt `{}` has no tokens (empty text and the tokenizer adds no BOS)",
                        row.prompt_id
                    ),
                }
                .into());
            }
            jobs.push(PromptJob {
                index,
                prompt_id: row.prompt_id,
                prompt: row.prompt,
                messages: row.messages,
                tokens,
                file: path.clone(),
                row: here,
            });
        }
    }
    sel.in_shard = jobs.len();
    if sel.selected == 0 {
        return Err(CoreError::BadInput {
            path: spec.to_path_buf(),
            row: None,
            message: match filter.split {
                Some(s) => format!(
                    "no prompts of split `{s}` among {} rows (hint: check --split)",
                    sel.rows_read
                ),
                None => "the prompts dataset has no rows".to_string(),
            },
        }
        .into());
    }
    Ok((jobs, sel))
}

/// Refuses prompts that leave no room for --max-new-tokens within the model's positions.
pub fn check_lengths(
    jobs: &[PromptJob],
    max_new_tokens: usize,
    max_positions: usize,
) -> Result<()> {
    for j in jobs {
        if j.tokens.len() + max_new_tokens > max_positions {
            return Err(CoreError::BadInput {
                path: j.file.clone(),
                row: Some(j.row),
                message: format!(
                    "prompt `{}` has {} tokens; with --max-new-tokens {max_new_tokens} it needs \
                     {} positions but the model has {max_positions} (hint: lower \
                     --max-new-tokens or drop long prompts in prep-data)",
                    j.prompt_id,
                    j.tokens.len(),
                    j.tokens.len() + max_new_tokens
                ),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_core::lineage::Lineage;
    use rlhf_core::parquet_io::write_records;

    pub(crate) fn word_tokenizer(dir: &Path) -> Tokenizer {
        let vocab: Vec<String> = ["<unk>", "</s>", "a", "b", "c", "hello", "world"]
            .iter()
            .map(|s| format!("\"{s}\": {}", vocab_index(s)))
            .collect();
        let json = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<unk>"}}}}"#,
            vocab.join(",")
        );
        std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"eos_token": "</s>"}"#,
        )
        .unwrap();
        Tokenizer::from_dir(dir).unwrap()
    }

    fn vocab_index(s: &str) -> usize {
        ["<unk>", "</s>", "a", "b", "c", "hello", "world"]
            .iter()
            .position(|w| *w == s)
            .unwrap()
    }

    fn row(id: &str, text: &str, split: &str, tokens: Option<Vec<i32>>) -> PromptRow {
        PromptRow {
            prompt_id: id.into(),
            prompt: text.into(),
            messages: None,
            prompt_tokens: tokens,
            split: split.into(),
            source: "test".into(),
            reference: None,
        }
    }

    #[test]
    fn selects_by_split_max_and_shard_and_uses_matching_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path());
        let rows = vec![
            row("p0", "hello world", "train", Some(vec![9, 9])),
            row("p1", "a b", "eval", None),
            row("p2", "b c", "train", None),
            row("p3", "c a", "train", None),
        ];
        let file = dir.path().join("p.parquet");
        let lineage =
            Lineage::new("test", "0", Artifact::Prompts).with_tokenizer(Some(tok.hash().into()));
        write_records(&file, &rows, &lineage).unwrap();

        let filter = Filter {
            split: Some("train"),
            max_prompts: Some(2),
            shard: None,
        };
        let (jobs, sel) = load(&file, &filter, &tok).unwrap();
        assert_eq!(
            jobs.iter()
                .map(|j| j.prompt_id.as_str())
                .collect::<Vec<_>>(),
            ["p0", "p2"]
        );
        // The stored tokens are used because the tokenizer hash matches.
        assert_eq!(jobs[0].tokens, vec![9, 9]);
        assert_eq!(jobs[1].tokens, vec![3, 4]);
        assert_eq!(
            (
                sel.other_split,
                sel.beyond_max,
                sel.stored_tokens,
                sel.encoded
            ),
            (1, 1, 1, 1)
        );

        let shard1 = Filter {
            shard: Some(Shard { index: 1, count: 2 }),
            ..Filter::default()
        };
        let (jobs, sel) = load(&file, &shard1, &tok).unwrap();
        assert_eq!(jobs.iter().map(|j| j.index).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(sel.selected, 4);

        // Another tokenizer recorded in the file: the text is encoded again.
        let other =
            Lineage::new("test", "0", Artifact::Prompts).with_tokenizer(Some("0000".into()));
        write_records(&file, &rows, &other).unwrap();
        let (jobs, _) = load(&file, &Filter::default(), &tok).unwrap();
        assert_eq!(jobs[0].tokens, vec![5, 6]);
    }

    #[test]
    fn duplicate_ids_and_long_prompts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tok = word_tokenizer(dir.path());
        let file = dir.path().join("p.parquet");
        let lineage = Lineage::new("test", "0", Artifact::Prompts);
        write_records(
            &file,
            &[row("p0", "a", "train", None), row("p0", "b", "train", None)],
            &lineage,
        )
        .unwrap();
        let err = format!("{:#}", load(&file, &Filter::default(), &tok).unwrap_err());
        assert!(err.contains("row 1") && err.contains("`p0`"), "{err}");

        write_records(&file, &[row("p0", "a b c", "train", None)], &lineage).unwrap();
        let (jobs, _) = load(&file, &Filter::default(), &tok).unwrap();
        assert!(check_lengths(&jobs, 5, 8).is_ok());
        let err = check_lengths(&jobs, 6, 8).unwrap_err().to_string();
        assert!(
            err.contains("needs 9 positions but the model has 8"),
            "{err}"
        );
    }
}
