//! OpenAI summarize-from-feedback comparisons (TL;DR): `info` holds the post (and title and
//! subreddit), `summaries` two candidate summaries, `choice` the index of the preferred one.
//! The prompt is the paper's format: "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:".

use rlhf_core::records::Message;
use serde_json::Value;

use super::fields::{field, required_number, string, text};
use super::Example;
use crate::reject::{Reason, Rejection};

/// Converts one comparison row.
pub fn convert(row: &Value) -> Result<Example, Rejection> {
    let post = if field(row, "info.post").is_some() {
        text(row, "info.post")?
    } else {
        text(row, "info.article")?
    };
    let mut prompt = String::new();
    if let Some(s) = field(row, "info.subreddit") {
        prompt.push_str(&format!("SUBREDDIT: r/{}\n", string(s, "info.subreddit")?));
    }
    if let Some(t) = field(row, "info.title") {
        prompt.push_str(&format!("TITLE: {}\n", string(t, "info.title")?));
    }
    prompt.push_str(&format!("POST: {post}\nTL;DR:"));
    let s0 = text(row, "summaries.0.text")?;
    let s1 = text(row, "summaries.1.text")?;
    let choice = required_number(row, "choice")?;
    let (chosen, rejected) = match choice {
        0.0 => (s0, s1),
        1.0 => (s1, s0),
        c => {
            return Err(Rejection::new(
                Reason::BadValue,
                format!("field `choice` should be 0 or 1, found {c}"),
            ))
        }
    };
    Ok(Example::Pair {
        prompt: vec![Message::new("user", &prompt)],
        chosen,
        rejected,
        label: 1.0,
        margin: None,
        group: None,
    })
}
