//! libtorch model core: transformer families (Llama family, GPT-2), LoRA adapters, scalar
//! heads, KV-cache generation and the Hugging Face / PEFT folder formats.

use std::error::Error as StdError;

/// True when an error in a cause chain is bad input (a model folder that cannot be used).
pub fn is_bad_input(_err: &(dyn StdError + 'static)) -> bool {
    false
}
