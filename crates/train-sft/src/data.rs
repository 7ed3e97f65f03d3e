//! The sft file as token sequences: each row becomes (prompt tokens, completion tokens),
//! the completion ending with EOS so the model learns to stop. Token columns written by
//! prep-data are used when the file's lineage names this model's tokenizer; otherwise the
//! text is tokenized here. A file tokenized for another tokenizer is refused, naming both.
//! Rows are split by their `split` column: `train` trains, `eval` measures.

use std::path::Path;

use rlhf_core::error::{CoreError, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::read_records;
use rlhf_core::records::{Message, SftRow};
use rlhf_core::tokenizer::Tokenizer;

/// One training example: prompt tokens (with BOS when the tokenizer adds one), never
/// trained on, and the completion as the response (ending with EOS unless truncated), the
/// tokens the loss is on.
pub use rlhf_nn::batch::PromptResponse as Example;

/// Where the tokens came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The file's prompt_tokens / completion_tokens columns.
    Columns,
    /// Tokenized here from the text columns.
    Text,
}

/// The examples of an sft file, with counts for the log and the lineage.
#[derive(Debug, Clone)]
pub struct SftData {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub source: TokenSource,
    /// Rows whose split was neither `train` nor `eval` (not used; counted).
    pub other_split: usize,
    /// Examples shortened to fit --max-seq-len.
    pub truncated: usize,
    /// The file's tokenizer hash, when its lineage records one.
    pub data_tokenizer: Option<String>,
}

/// Loads and tokenizes the sft file at `path` for a model whose tokenizer is `tok` and
/// whose vocabulary has `vocab_size` entries; examples are cut to `max_seq_len` tokens.
pub fn load(
    path: &Path,
    tok: &Tokenizer,
    vocab_size: usize,
    max_seq_len: usize,
) -> Result<SftData> {
    let (rows, ds) = read_records::<SftRow>(path)?;
    let data_tokenizer = ds.tokenizer_hash()?;
    Lineage::check_tokenizer(
        &path.display().to_string(),
        data_tokenizer.as_deref(),
        &tok.path().display().to_string(),
        tok.hash(),
    )?;
    let use_columns = data_tokenizer.is_some()
        && rows
            .iter()
            .all(|r| r.prompt_tokens.is_some() && r.completion_tokens.is_some());
    let eos = tok.eos_id().map(|e| e as i32);
    let chat = tok.chat()?;
    let model_template = tok.chat_template.is_some();
    let mut data = SftData {
        train: Vec::new(),
        eval: Vec::new(),
        source: if use_columns {
            TokenSource::Columns
        } else {
            TokenSource::Text
        },
        other_split: 0,
        truncated: 0,
        data_tokenizer,
    };
    let bad = |row: usize, message: String| CoreError::BadInput {
        path: path.to_path_buf(),
        row: Some(row),
        message,
    };
    for (i, row) in rows.iter().enumerate() {
        let target = match row.split.as_str() {
            "train" => &mut data.train,
            "eval" => &mut data.eval,
            _ => {
                data.other_split += 1;
                continue;
            }
        };
        let (prompt, mut completion) = match (&row.prompt_tokens, &row.completion_tokens) {
            (Some(p), Some(c)) if use_columns => (p.clone(), c.clone()),
            _ => {
                let (prompt_text, completion_text, rendered) =
                    texts(row, &chat).map_err(|m| bad(i, m))?;
                // A prompt the model's own chat template rendered holds the special tokens
                // the model wants (transformers' apply_chat_template(tokenize=True) adds
                // none, and prep-data's prompts are made the same way); plain text gets BOS.
                let prompt = if rendered && model_template {
                    tok.encode_rendered(&prompt_text)?
                } else {
                    tok.encode(&prompt_text, true)?
                };
                (prompt, tok.encode(&completion_text, false)?)
            }
        };
        if let Some(e) = eos {
            if completion.last() != Some(&e) {
                completion.push(e);
            }
        }
        if let Some(t) = prompt
            .iter()
            .chain(&completion)
            .find(|&&t| t < 0 || t as usize >= vocab_size)
        {
            return Err(bad(
                i,
                format!("token id {t} outside the model's vocabulary [0, {vocab_size})"),
            ));
        }
        let mut ex = Example {
            prompt,
            response: completion,
        };
        if truncate(&mut ex, max_seq_len) {
            data.truncated += 1;
        }
        if ex.response.is_empty() {
            return Err(bad(i, "no completion tokens".to_string()));
        }
        target.push(ex);
    }
    if data.train.is_empty() {
        return Err(CoreError::BadInput {
            path: path.to_path_buf(),
            row: None,
            message: format!(
                "no rows with split `train` ({} rows, {} eval, {} other)",
                rows.len(),
                data.eval.len(),
                data.other_split
            ),
        });
    }
    Ok(data)
}

/// The prompt and completion text of a row, and whether the prompt was rendered with the
/// chat template. A row with an empty prompt and a message list is rendered: every message
/// before the last assistant turn is the prompt (with the generation prompt), the last
/// assistant turn is the completion unless the completion column is set.
fn texts(
    row: &SftRow,
    chat: &rlhf_core::chat::ChatTemplate,
) -> std::result::Result<(String, String, bool), String> {
    match &row.messages {
        Some(msgs) if row.prompt.is_empty() && !msgs.is_empty() => {
            let last_assistant = msgs.iter().rposition(|m| m.role == "assistant");
            let (context, reply): (&[Message], Option<&Message>) = match last_assistant {
                Some(k) => (&msgs[..k], Some(&msgs[k])),
                None => (&msgs[..], None),
            };
            let prompt = chat
                .render(context, true)
                .map_err(|e| format!("messages: {e}"))?;
            let completion = if row.completion.is_empty() {
                reply
                    .map(|m| m.content.clone())
                    .ok_or("messages have no assistant turn and `completion` is empty")?
            } else {
                row.completion.clone()
            };
            Ok((prompt, completion, true))
        }
        _ => Ok((row.prompt.clone(), row.completion.clone(), false)),
    }
}

/// Cuts an example to `max_len` tokens: the prompt loses tokens from its start (keeping
/// at least half the budget when the completion is long), then the completion loses
/// tokens from its end. Returns whether anything was cut.
pub fn truncate(ex: &mut Example, max_len: usize) -> bool {
    if ex.len() <= max_len {
        return false;
    }
    let keep_prompt = ex
        .prompt
        .len()
        .min(max_len.saturating_sub(ex.response.len()).max(max_len / 2));
    let drop = ex.prompt.len() - keep_prompt;
    ex.prompt.drain(..drop);
    ex.response.truncate(max_len - ex.prompt.len());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: usize, c: usize) -> Example {
        Example {
            prompt: (0..p as i32).collect(),
            response: (100..100 + c as i32).collect(),
        }
    }

    fn sft_row(prompt: &str, completion: &str, messages: Option<Vec<Message>>) -> SftRow {
        SftRow {
            sft_id: "s".into(),
            prompt_id: "p".into(),
            prompt: prompt.into(),
            completion: completion.into(),
            messages,
            split: "train".into(),
            source: "t".into(),
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    #[test]
    fn message_rows_render_the_context_and_train_on_the_last_assistant_turn() {
        let chat = rlhf_core::chat::ChatTemplate::plain();
        let msgs = vec![
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
            Message::new("user", "2+2?"),
            Message::new("assistant", "4"),
        ];
        let (p, c, rendered) = texts(&sft_row("", "", Some(msgs.clone())), &chat).unwrap();
        assert_eq!(p, "User: hi\nAssistant: hello\nUser: 2+2?\nAssistant:");
        assert_eq!(c, "4");
        assert!(rendered, "messages are rendered with the template");
        // A set prompt wins over the messages; a set completion wins over the last turn.
        let (p, c, rendered_plain) = texts(&sft_row("P", "C", Some(msgs.clone())), &chat).unwrap();
        assert_eq!((p.as_str(), c.as_str()), ("P", "C"));
        assert!(!rendered_plain, "a set prompt is plain text");
        let only_user = vec![Message::new("user", "hi")];
        let err = texts(&sft_row("", "", Some(only_user)), &chat).unwrap_err();
        assert!(err.contains("no assistant turn"), "{err}");
    }

    #[test]
    fn truncation_keeps_the_prompt_end_and_the_completion_start() {
        let mut e = ex(10, 4);
        assert!(!truncate(&mut e, 14));
        assert!(truncate(&mut e, 8));
        assert_eq!(e.prompt, vec![6, 7, 8, 9]);
        assert_eq!(e.response, vec![100, 101, 102, 103]);
        let mut e = ex(10, 20);
        assert!(truncate(&mut e, 8));
        assert_eq!(e.prompt, vec![6, 7, 8, 9]);
        assert_eq!(e.response, vec![100, 101, 102, 103]);
        let mut e = ex(2, 20);
        assert!(truncate(&mut e, 8));
        assert_eq!(e.prompt, vec![0, 1]);
        assert_eq!(e.response.len(), 6);
    }
}
