//! UltraFeedback-binarized style: `chosen` and `rejected` are message lists that share the
//! prompt turns and end in the two assistant replies; `prompt` is the request text;
//! `score_chosen`/`score_rejected` give the margin, and equal scores a tie (label 0.5).

use serde_json::Value;

use super::fields::{field, messages, number, prompt_messages, required, split_last_reply, to_f32};
use super::Example;
use crate::reject::{Reason, Rejection};

/// Converts one row.
pub fn convert(row: &Value) -> Result<Example, Rejection> {
    let chosen = messages(required(row, "chosen")?, "chosen")?;
    let rejected = messages(required(row, "rejected")?, "rejected")?;
    let (prompt_c, chosen) = split_last_reply(chosen, "chosen")?;
    let (prompt_r, rejected) = split_last_reply(rejected, "rejected")?;
    if prompt_c != prompt_r {
        return Err(Rejection::new(
            Reason::MalformedTranscript,
            "`chosen` and `rejected` differ before their final assistant replies",
        ));
    }
    let prompt = match field(row, "prompt") {
        Some(p) if prompt_c.len() <= 1 => prompt_messages(p, "prompt")?,
        _ => prompt_c,
    };
    let scores = match (field(row, "score_chosen"), field(row, "score_rejected")) {
        (Some(a), Some(b)) => Some((number(a, "score_chosen")?, number(b, "score_rejected")?)),
        _ => None,
    };
    let (label, margin) = match scores {
        Some((a, b)) if a == b => (0.5, Some(0.0)),
        Some((a, b)) => (1.0, Some(to_f32(a - b, "score_chosen - score_rejected")?)),
        None => (1.0, None),
    };
    Ok(Example::Pair {
        prompt,
        chosen,
        rejected,
        label,
        margin,
        group: None,
    })
}
