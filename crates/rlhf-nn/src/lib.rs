//! libtorch model core: transformer families (Llama family, GPT-2), LoRA adapters, scalar
//! heads, KV-cache generation and the Hugging Face / PEFT folder formats.
//!
//! Contract used by the stage binaries:
//! - [`ModelArgs`] (`--model`, `--device`, `--dtype`), [`init_threads`], [`is_bad_input`], [`NnError`].
//! - [`config::ModelConfig`] (`from_hf_json`, `to_hf_json`, `preset`), [`config::Arch`].
//! - [`Model`]: `load`, `random`, `save_pretrained`, `config`, `base_id`,
//!   `set_base_trainable`, `base_parameters`; adapters `add_adapter`, `load_adapter`,
//!   `save_adapter`, `adapter_parameters`, `adapter_named_parameters`, `merge_adapter`;
//!   `forward` (all positions), `forward_cached` (decode step with a [`KvCache`]),
//!   `lm_logits`, `head`. All fallible calls return `Result<_, NnError>`.
//! - [`batch::SeqBatch`], [`scoring`] (`token_logprobs`, `token_logprobs_entropy`,
//!   `token_values`, `last_token_scores`, `forward_outputs`), [`generate`] (`generate`,
//!   `SamplingParams`, `Generation`, `FinishReason`), [`crew_times`] (how the decode kernels'
//!   threads shared their jobs; a profiling aid).

mod adapters;
pub mod args;
pub mod batch;
pub mod config;
mod decode_kernels;
pub mod error;
mod exp;
pub mod generate;
mod gpt2;
pub mod kv_cache;
mod layers;
mod llama;
mod loader;
pub mod lora;
mod model;
pub mod peft;
pub mod rng;
pub mod sampler;
pub mod scoring;
pub mod weights;

use std::error::Error as StdError;

pub use args::{init_threads, parse_device, Dtype, DtypeKind, LoraArgs, LoraChoice, ModelArgs};
pub use config::{Arch, ModelConfig};
pub use decode_kernels::{crew_times, CrewTimes};
pub use error::NnError;
pub use kv_cache::KvCache;
pub use lora::{HeadKind, LoraConfig};
pub use model::{Model, LM_HEAD};

/// True when an error in a cause chain is bad input (a model or adapter folder that cannot be
/// used, bad arguments): the classifier for `rlhf_core::cli::finish`.
pub fn is_bad_input(err: &(dyn StdError + 'static)) -> bool {
    err.downcast_ref::<NnError>()
        .is_some_and(NnError::is_bad_input)
}

/// True when an error in a cause chain is a usage error of this crate (a `--device` that
/// cannot be used): the usage classifier for `rlhf_core::cli::finish_with` (exit 2).
pub fn is_usage(err: &(dyn StdError + 'static)) -> bool {
    matches!(err.downcast_ref::<NnError>(), Some(NnError::Device(_)))
}
