//! Thumbs up/down feedback (Taskmaster reward style): `context` is the conversation so far
//! (a list of turns, often given as JSON text), `generation` the model's reply, `reward`
//! 1 (up) or 0 (down). Any other finite number is kept as a scalar rating.

use serde_json::Value;

use super::fields::{prompt_messages, required, required_number, text, to_f32};
use super::Example;
use crate::reject::Rejection;

/// Converts one row into a rating.
pub fn convert(row: &Value) -> Result<Example, Rejection> {
    let prompt = prompt_messages(required(row, "context")?, "context")?;
    let response = text(row, "generation")?;
    let rating = to_f32(required_number(row, "reward")?, "field `reward`")?;
    Ok(Example::Rating {
        prompt,
        response,
        rating,
    })
}
