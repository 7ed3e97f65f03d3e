//! The generic format: any columns, mapped with --prompt-column, --chosen-column, ...
//! --kind says whether rows are pairs, ratings, SFT examples or prompts (or lets the
//! columns decide). A prompt may be text or a message list; an SFT example may be a
//! messages column ending with the assistant's reply.

use serde_json::Value;

use super::fields::{
    field, messages, number, prompt_messages, required, split_last_reply, string, text, to_f32,
};
use super::{Example, FormatOptions, GenericKind};
use crate::reject::{Reason, Rejection};

/// The kind of rows from the columns present, when --kind is auto.
pub fn detect_kind(row: &Value, o: &FormatOptions) -> Option<GenericKind> {
    if o.kind != GenericKind::Auto {
        return Some(o.kind);
    }
    let has = |k: &str| field(row, k).is_some();
    if has(&o.prompt_column) && has(&o.chosen_column) && has(&o.rejected_column) {
        Some(GenericKind::Pairs)
    } else if has(&o.prompt_column) && has(&o.response_column) && has(&o.rating_column) {
        Some(GenericKind::Ratings)
    } else if (has(&o.prompt_column) && has(&o.completion_column)) || has(&o.messages_column) {
        Some(GenericKind::Sft)
    } else if has(&o.prompt_column) {
        Some(GenericKind::Prompts)
    } else {
        None
    }
}

/// Converts one row.
pub fn convert(row: &Value, o: &FormatOptions) -> Result<Example, Rejection> {
    let kind = detect_kind(row, o).ok_or_else(|| {
        Rejection::new(
            Reason::MissingField,
            format!(
                "no `{}` (or `{}`) column; map columns with --prompt-column etc.",
                o.prompt_column, o.messages_column
            ),
        )
    })?;
    let prompt = || prompt_messages(required(row, &o.prompt_column)?, &o.prompt_column);
    match kind {
        GenericKind::Pairs => {
            let label = match &o.label_column {
                Some(c) => number(required(row, c)?, c)?,
                None => 1.0,
            };
            if !(0.0..=1.0).contains(&label) {
                return Err(Rejection::new(
                    Reason::BadValue,
                    format!("label {label} is not a probability in [0, 1]"),
                ));
            }
            let (mut chosen, mut rejected) =
                (text(row, &o.chosen_column)?, text(row, &o.rejected_column)?);
            let mut label = label as f32;
            if label < 0.5 {
                std::mem::swap(&mut chosen, &mut rejected);
                label = 1.0 - label;
            }
            let margin = match &o.margin_column {
                Some(c) => field(row, c)
                    .map(|v| to_f32(number(v, c)?, &format!("field `{c}`")))
                    .transpose()?,
                None => None,
            };
            Ok(Example::Pair {
                prompt: prompt()?,
                chosen,
                rejected,
                label,
                margin,
                group: None,
            })
        }
        GenericKind::Ratings => Ok(Example::Rating {
            prompt: prompt()?,
            response: text(row, &o.response_column)?,
            rating: to_f32(
                number(required(row, &o.rating_column)?, &o.rating_column)?,
                &format!("field `{}`", o.rating_column),
            )?,
        }),
        GenericKind::Sft => {
            if field(row, &o.completion_column).is_some() {
                Ok(Example::Sft {
                    prompt: prompt()?,
                    completion: text(row, &o.completion_column)?,
                })
            } else {
                let m = messages(required(row, &o.messages_column)?, &o.messages_column)?;
                let (prompt, completion) = split_last_reply(m, &o.messages_column)?;
                Ok(Example::Sft { prompt, completion })
            }
        }
        GenericKind::Prompts => Ok(Example::Prompt {
            prompt: prompt()?,
            reference: field(row, &o.reference_column)
                .map(|v| string(v, &o.reference_column))
                .transpose()?,
        }),
        GenericKind::Auto => Err(Rejection::new(
            Reason::MissingField,
            "cannot tell what the row holds; pass --kind",
        )),
    }
}
