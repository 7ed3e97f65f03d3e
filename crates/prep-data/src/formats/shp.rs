//! Stanford Human Preferences (SHP): a Reddit post (`history`) with two comments
//! (`human_ref_A`, `human_ref_B`), `labels` = 1 when A is preferred, and the comments'
//! scores. The score ratio (preferred / other) is kept as the margin; --min-score-ratio
//! rejects weak preferences.

use rlhf_core::records::Message;
use serde_json::Value;

use super::fields::{field, number, required_number, text, to_f32};
use super::Example;
use crate::reject::{Reason, Rejection};

/// Converts one SHP row.
pub fn convert(row: &Value, min_ratio: Option<f64>) -> Result<Example, Rejection> {
    let post = if field(row, "history").is_some() {
        text(row, "history")?
    } else {
        text(row, "post")?
    };
    let a = text(row, "human_ref_A")?;
    let b = text(row, "human_ref_B")?;
    let label = required_number(row, "labels")?;
    let a_wins = match label {
        1.0 => true,
        0.0 => false,
        x => {
            return Err(Rejection::new(
                Reason::BadValue,
                format!("field `labels` should be 1 (A preferred) or 0 (B preferred), found {x}"),
            ))
        }
    };
    let ratio = match field(row, "score_ratio") {
        Some(v) => Some(number(v, "score_ratio")?),
        None => match (field(row, "score_A"), field(row, "score_B")) {
            (Some(sa), Some(sb)) => {
                let (sa, sb) = (number(sa, "score_A")?, number(sb, "score_B")?);
                let (win, lose) = if a_wins { (sa, sb) } else { (sb, sa) };
                (lose > 0.0).then(|| win / lose)
            }
            _ => None,
        },
    };
    if let (Some(min), Some(r)) = (min_ratio, ratio) {
        if r < min {
            return Err(Rejection::new(
                Reason::BelowMinRatio,
                format!("score ratio {r:.3} is below --min-score-ratio {min}"),
            ));
        }
    }
    let (chosen, rejected) = if a_wins { (a, b) } else { (b, a) };
    Ok(Example::Pair {
        prompt: vec![Message::new("user", &post)],
        chosen,
        rejected,
        label: 1.0,
        margin: ratio.map(|r| to_f32(r, "the score ratio")).transpose()?,
        group: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_picks_side_and_ratio_filters() {
        let row = json!({"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "labels": 0, "score_A": 2, "score_B": 6});
        let Example::Pair { chosen, margin, .. } = convert(&row, None).unwrap() else {
            panic!()
        };
        assert_eq!((chosen.as_str(), margin), ("b", Some(3.0)));
        assert_eq!(
            convert(&row, Some(4.0)).unwrap_err().reason,
            Reason::BelowMinRatio
        );
    }
}
