//! Typed access to the fields of one raw JSON row, with rejections that name the field:
//! strings, numbers (also numeric strings from CSV), and chat message lists (also given as
//! JSON text, and with Taskmaster/ShareGPT-style keys and roles).

use rlhf_core::records::Message;
use serde_json::Value;

use crate::input::type_of;
use crate::reject::{Reason, Rejection};

/// Looks up a possibly nested field (`info.post`).
pub fn field<'a>(row: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = row;
    for key in path.split('.') {
        v = match v {
            Value::Object(m) => m.get(key)?,
            Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

/// A required field.
pub fn required<'a>(row: &'a Value, path: &str) -> Result<&'a Value, Rejection> {
    field(row, path)
        .ok_or_else(|| Rejection::new(Reason::MissingField, format!("missing field `{path}`")))
}

/// A required string field, trimmed; empty is a rejection.
pub fn text(row: &Value, path: &str) -> Result<String, Rejection> {
    let s = string(required(row, path)?, path)?;
    nonempty(s, path)
}

/// A string value, trimmed, or a rejection naming `what`.
pub fn string(v: &Value, what: &str) -> Result<String, Rejection> {
    match v {
        Value::String(s) => Ok(s.trim().to_string()),
        other => Err(Rejection::new(
            Reason::BadValue,
            format!(
                "field `{what}` should be a string, found {}",
                type_of(other)
            ),
        )),
    }
}

/// Refuses empty text.
pub fn nonempty(s: String, what: &str) -> Result<String, Rejection> {
    if s.is_empty() {
        Err(Rejection::new(
            Reason::EmptyText,
            format!("field `{what}` is empty"),
        ))
    } else {
        Ok(s)
    }
}

/// A number: JSON numbers, booleans (1/0) and numeric strings (CSV).
pub fn number(v: &Value, what: &str) -> Result<f64, Rejection> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "true" => Some(1.0),
            "false" => Some(0.0),
            t => t.parse::<f64>().ok(),
        },
        _ => None,
    };
    match n {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(Rejection::new(
            Reason::BadValue,
            format!("field `{what}` should be a number, found {v}"),
        )),
    }
}

/// A required numeric field.
pub fn required_number(row: &Value, path: &str) -> Result<f64, Rejection> {
    number(required(row, path)?, path)
}

/// A number as the 32-bit float the artifacts store: one beyond f32's range (about
/// ±3.4e38, or an infinite ratio or difference) is a rejection naming `what`, not an
/// infinity in the output.
pub fn to_f32(x: f64, what: &str) -> Result<f32, Rejection> {
    let y = x as f32;
    if y.is_finite() {
        Ok(y)
    } else {
        Err(Rejection::new(
            Reason::BadValue,
            format!("{what} = {x} is outside the 32-bit float range (about ±3.4e38)"),
        ))
    }
}

/// Normalises a role name: user/human -> user, assistant/gpt/bot/model -> assistant,
/// system -> system; anything else is a rejection.
pub fn role(name: &str) -> Result<&'static str, Rejection> {
    match name.trim().to_lowercase().as_str() {
        "user" | "human" | "prompter" => Ok("user"),
        "assistant" | "gpt" | "bot" | "model" | "agent" => Ok("assistant"),
        "system" => Ok("system"),
        other => Err(Rejection::new(
            Reason::UnknownRole,
            format!("unknown role `{other}` (expected system, user or assistant)"),
        )),
    }
}

/// A list of chat messages: a JSON array (or JSON text of one) of objects with
/// role/content (or speaker/text, from/value).
pub fn messages(v: &Value, what: &str) -> Result<Vec<Message>, Rejection> {
    let parsed;
    let list = match v {
        Value::Array(a) => a,
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| {
                Rejection::new(
                    Reason::BadValue,
                    format!("field `{what}` is not a JSON list of messages: {e}"),
                )
            })?;
            match &parsed {
                Value::Array(a) => a,
                other => {
                    return Err(Rejection::new(
                        Reason::BadValue,
                        format!(
                            "field `{what}` should be a list of messages, found {}",
                            type_of(other)
                        ),
                    ))
                }
            }
        }
        other => {
            return Err(Rejection::new(
                Reason::BadValue,
                format!(
                    "field `{what}` should be a list of messages, found {}",
                    type_of(other)
                ),
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let r = ["role", "speaker", "from"]
                .iter()
                .find_map(|k| field(m, k))
                .ok_or_else(|| {
                    Rejection::new(Reason::MissingField, format!("`{what}[{i}]` has no `role`"))
                })?;
            let r = role(&string(r, &format!("{what}[{i}].role"))?)?;
            let c = ["content", "text", "value"]
                .iter()
                .find_map(|k| field(m, k))
                .ok_or_else(|| {
                    Rejection::new(
                        Reason::MissingField,
                        format!("`{what}[{i}]` has no `content`"),
                    )
                })?;
            let c = string(c, &format!("{what}[{i}].content"))?;
            Ok(Message::new(r, &c))
        })
        .collect()
}

/// A prompt given either as text (one user message) or as a message list.
pub fn prompt_messages(v: &Value, what: &str) -> Result<Vec<Message>, Rejection> {
    match v {
        Value::String(s) if !s.trim_start().starts_with('[') => Ok(vec![Message::new(
            "user",
            &nonempty(s.trim().to_string(), what)?,
        )]),
        _ => {
            let m = messages(v, what)?;
            if m.is_empty() || m.iter().all(|m| m.content.is_empty()) {
                return Err(Rejection::new(
                    Reason::EmptyText,
                    format!("field `{what}` is empty"),
                ));
            }
            Ok(m)
        }
    }
}

/// Splits a conversation ending in an assistant reply into (prompt messages, reply).
pub fn split_last_reply(
    mut m: Vec<Message>,
    what: &str,
) -> Result<(Vec<Message>, String), Rejection> {
    match m.pop() {
        Some(last) if last.role == "assistant" && !m.is_empty() => {
            Ok((m, nonempty(last.content, &format!("{what} (final reply)"))?))
        }
        _ => Err(Rejection::new(
            Reason::MalformedTranscript,
            format!(
                "`{what}` should end with an assistant reply after at least one prompt message"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_numbers_and_messages() {
        let row = json!({"info": {"post": " hi "}, "n": "0.5", "b": true, "m": "[{\"speaker\":\"USER\",\"text\":\"x\"}]"});
        assert_eq!(text(&row, "info.post").unwrap(), "hi");
        assert_eq!(required_number(&row, "n").unwrap(), 0.5);
        assert_eq!(required_number(&row, "b").unwrap(), 1.0);
        assert_eq!(text(&row, "nope").unwrap_err().reason, Reason::MissingField);
        assert_eq!(
            messages(field(&row, "m").unwrap(), "m").unwrap(),
            vec![Message::new("user", "x")]
        );
        let bad = json!([{"role": "robot", "content": "x"}]);
        assert_eq!(messages(&bad, "m").unwrap_err().reason, Reason::UnknownRole);
    }
}
