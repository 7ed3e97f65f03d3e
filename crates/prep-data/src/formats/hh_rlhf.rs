//! Anthropic HH-RLHF: `chosen` and `rejected` are whole transcripts of "\n\nHuman:" and
//! "\n\nAssistant:" turns that share everything but the final assistant reply. The shared
//! turns become the prompt (as messages), the two final replies chosen and rejected.

use rlhf_core::records::Message;
use serde_json::Value;

use super::fields::{required, split_last_reply, string};
use super::Example;
use crate::reject::{Reason, Rejection};

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

/// Parses a transcript into messages.
pub fn parse_transcript(text: &str, what: &str) -> Result<Vec<Message>, Rejection> {
    let t = if text.starts_with("Human:") {
        format!("\n\n{text}")
    } else {
        text.to_string()
    };
    let mut marks: Vec<(usize, &str, usize)> = Vec::new();
    for (marker, role) in [(HUMAN, "user"), (ASSISTANT, "assistant")] {
        marks.extend(
            t.match_indices(marker)
                .map(|(i, _)| (i, role, marker.len())),
        );
    }
    marks.sort();
    match marks.first() {
        Some((0, "user", _)) => {}
        _ => {
            return Err(Rejection::new(
                Reason::MalformedTranscript,
                format!("`{what}` does not start with a \"Human:\" turn"),
            ))
        }
    }
    let mut out = Vec::with_capacity(marks.len());
    for (k, (start, role, len)) in marks.iter().enumerate() {
        let end = marks.get(k + 1).map_or(t.len(), |m| m.0);
        out.push(Message::new(role, t[start + len..end].trim()));
    }
    Ok(out)
}

/// Converts one HH-RLHF row.
pub fn convert(row: &Value) -> Result<Example, Rejection> {
    let chosen = parse_transcript(&string(required(row, "chosen")?, "chosen")?, "chosen")?;
    let rejected = parse_transcript(&string(required(row, "rejected")?, "rejected")?, "rejected")?;
    let (prompt, chosen) = split_last_reply(chosen, "chosen")?;
    let (prompt_r, rejected) = split_last_reply(rejected, "rejected")?;
    if prompt != prompt_r {
        return Err(Rejection::new(
            Reason::MalformedTranscript,
            "`chosen` and `rejected` differ before their final assistant replies",
        ));
    }
    if prompt.last().map(|m| m.role.as_str()) != Some("user") {
        return Err(Rejection::new(
            Reason::MalformedTranscript,
            "the prompt does not end with a \"Human:\" turn",
        ));
    }
    if prompt.iter().any(|m| m.content.is_empty()) {
        return Err(Rejection::new(Reason::EmptyText, "a prompt turn is empty"));
    }
    Ok(Example::Pair {
        prompt,
        chosen,
        rejected,
        label: 1.0,
        margin: None,
        group: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_shared_prefix_and_final_replies() {
        let row = json!({
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: A pun.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
        });
        let Example::Pair {
            prompt,
            chosen,
            rejected,
            ..
        } = convert(&row).unwrap()
        else {
            panic!("not a pair")
        };
        assert_eq!(prompt.len(), 3);
        assert_eq!(prompt[2], Message::new("user", "Tell me a joke"));
        assert_eq!((chosen.as_str(), rejected.as_str()), ("A pun.", "No."));
        let bad = json!({"chosen": "Assistant: x", "rejected": "\n\nHuman: a\n\nAssistant: b"});
        assert_eq!(
            convert(&bad).unwrap_err().reason,
            Reason::MalformedTranscript
        );
    }
}
