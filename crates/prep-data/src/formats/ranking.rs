//! K-way rankings (InstructGPT): a prompt with K responses and their order, expanded into
//! all K-choose-2 pairs that share a group_id. Order is given either as `ranks` (one per
//! response, lower is better, equal ranks are ties kept with label 0.5 as in Christiano et
//! al. 2017, null or "incomparable" marks a response that cannot be compared) or as
//! `ranking` (response indices, best first). A row with `"incomparable": true` is dropped.

use rlhf_core::hash::content_id;
use serde_json::Value;

use super::fields::{field, number, prompt_messages, required, string, to_f32};
use super::Example;
use crate::reject::{Reason, Rejection};

/// The most responses one ranking may hold: K responses expand into K(K-1)/2 pairs, each
/// a copy of the prompt and two responses, so an unbounded K turns one row of a few
/// megabytes into terabytes. Real K-way comparisons rank 4 to 9 responses.
pub const MAX_RESPONSES: usize = 64;

/// Expands one ranking row into pairs (and rejections for incomparable pairs).
pub fn convert(row: &Value) -> Vec<Result<Example, Rejection>> {
    match expand(row) {
        Ok(v) => v,
        Err(r) => vec![Err(r)],
    }
}

fn expand(row: &Value) -> Result<Vec<Result<Example, Rejection>>, Rejection> {
    if field(row, "incomparable").is_some_and(|v| v == &Value::Bool(true)) {
        return Err(Rejection::new(
            Reason::Incomparable,
            "the ranking is marked incomparable",
        ));
    }
    let prompt = prompt_messages(required(row, "prompt")?, "prompt")?;
    let responses: Vec<String> = match required(row, "responses")? {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| string(v, &format!("responses[{i}]")))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(Rejection::new(
                Reason::BadValue,
                "field `responses` should be a list of strings",
            ))
        }
    };
    let k = responses.len();
    if k < 2 {
        return Err(Rejection::new(
            Reason::BadValue,
            format!("a ranking needs at least 2 responses, found {k}"),
        ));
    }
    if k > MAX_RESPONSES {
        return Err(Rejection::new(
            Reason::BadValue,
            format!(
                "a ranking of {k} responses would expand into {} pairs; at most {MAX_RESPONSES} responses are accepted",
                k * (k - 1) / 2
            ),
        ));
    }
    // rank[i]: Some(lower is better) or None (incomparable).
    let ranks: Vec<Option<f64>> = if let Some(r) = field(row, "ranks") {
        let Value::Array(r) = r else {
            return Err(Rejection::new(
                Reason::BadValue,
                "field `ranks` should be a list",
            ));
        };
        if r.len() != k {
            return Err(Rejection::new(
                Reason::BadValue,
                format!("{k} responses but {} ranks", r.len()),
            ));
        }
        r.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Null => Ok(None),
                Value::String(s) if s.eq_ignore_ascii_case("incomparable") => Ok(None),
                v => number(v, &format!("ranks[{i}]")).map(Some),
            })
            .collect::<Result<_, _>>()?
    } else {
        let Value::Array(order) = required(row, "ranking")? else {
            return Err(Rejection::new(
                Reason::BadValue,
                "field `ranking` should be a list of response indices",
            ));
        };
        let mut ranks = vec![None; k];
        for (pos, v) in order.iter().enumerate() {
            let idx = number(v, &format!("ranking[{pos}]"))?;
            let i = idx as usize;
            if idx < 0.0 || idx.fract() != 0.0 || i >= k || ranks[i].is_some() {
                return Err(Rejection::new(
                    Reason::BadValue,
                    format!("`ranking[{pos}]` = {idx} is not a new index below {k}"),
                ));
            }
            ranks[i] = Some(pos as f64);
        }
        ranks
    };
    let mut key: Vec<&str> = vec!["group"];
    let prompt_text: Vec<String> = prompt
        .iter()
        .map(|m| format!("{}:{}", m.role, m.content))
        .collect();
    key.extend(prompt_text.iter().map(String::as_str));
    key.extend(responses.iter().map(String::as_str));
    let group = content_id(&key);
    let mut out = Vec::new();
    for i in 0..k {
        for j in i + 1..k {
            let (ri, rj) = match (ranks[i], ranks[j]) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    out.push(Err(Rejection::new(
                        Reason::Incomparable,
                        format!("responses {i} and {j} cannot be compared (a rank is missing or incomparable)"),
                    )));
                    continue;
                }
            };
            let margin = match to_f32(
                (ri - rj).abs(),
                &format!("the rank difference of responses {i} and {j}"),
            ) {
                Ok(m) => m,
                Err(r) => {
                    out.push(Err(r));
                    continue;
                }
            };
            let (win, lose, label) = if ri < rj {
                (i, j, 1.0)
            } else if rj < ri {
                (j, i, 1.0)
            } else {
                (i, j, 0.5)
            };
            out.push(Ok(Example::Pair {
                prompt: prompt.clone(),
                chosen: responses[win].clone(),
                rejected: responses[lose].clone(),
                label,
                margin: Some(margin),
                group: Some(group.clone()),
            }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(out: &[Result<Example, Rejection>]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Ok(Example::Pair {
                    chosen,
                    rejected,
                    label,
                    ..
                }) => format!("{chosen}>{rejected}:{label}"),
                Ok(_) => "other".into(),
                Err(e) => e.reason.code().to_string(),
            })
            .collect()
    }

    #[test]
    fn ranks_give_all_pairs_with_ties_and_incomparables() {
        let row =
            json!({"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [2, 1, 2, null]});
        let out = convert(&row);
        assert_eq!(
            labels(&out),
            [
                "b>a:1",
                "a>c:0.5",
                "incomparable",
                "b>c:1",
                "incomparable",
                "incomparable"
            ]
        );
        let order = json!({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]});
        assert_eq!(labels(&convert(&order)), ["a>b:1", "c>a:1", "c>b:1"]);
        let marked =
            json!({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2], "incomparable": true});
        assert_eq!(labels(&convert(&marked)), ["incomparable"]);
    }
}
