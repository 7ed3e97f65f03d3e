//! The reference policy behind the `ref_logprobs` column. By default it is --model with the
//! policy adapter switched off (the same weights in memory). A fully fine-tuned policy (a
//! `ppo-update --full` output) has no adapter to switch off, so --ref-model names another
//! model folder (the SFT model it was tuned from), loaded as a second, frozen copy; it must
//! speak --model's vocabulary: the same tokenizer (by content hash) and vocabulary size.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rlhf_core::error::CoreError;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::{Model, ModelConfig};

const HINT: &str = "--ref-model must be the model the policy was tuned from (the SFT model), \
with the tokenizer and vocabulary of --model";

/// Checks, before any weights are loaded, that `ref_dir` has the tokenizer (`tokenizer`,
/// --model's) and the vocabulary size of `model_dir`; a mismatch names both folders.
pub fn check_compatible(model_dir: &Path, tokenizer: &Tokenizer, ref_dir: &Path) -> Result<()> {
    let names = (
        format!("--model {}", model_dir.display()),
        format!("--ref-model {}", ref_dir.display()),
    );
    let ref_tokenizer = Tokenizer::from_dir(ref_dir).context("--ref-model")?;
    if ref_tokenizer.hash() != tokenizer.hash() {
        bail!(CoreError::Mismatch {
            what: "tokenizer",
            left_name: names.0,
            left: tokenizer.hash().to_string(),
            right_name: names.1,
            right: ref_tokenizer.hash().to_string(),
            hint: HINT.into(),
        });
    }
    let policy = ModelConfig::from_hf_json(model_dir)
        .with_context(|| format!("reading the config of --model {}", model_dir.display()))?;
    let reference = ModelConfig::from_hf_json(ref_dir)
        .with_context(|| format!("reading the config of --ref-model {}", ref_dir.display()))?;
    if policy.vocab_size != reference.vocab_size {
        bail!(CoreError::Mismatch {
            what: "vocabulary size",
            left_name: names.0,
            left: policy.vocab_size.to_string(),
            right_name: names.1,
            right: reference.vocab_size.to_string(),
            hint: HINT.into(),
        });
    }
    Ok(())
}

/// Loads --ref-model as a frozen model on `device` as `kind` (scored without any adapter).
pub fn load(ref_dir: &Path, device: tch::Device, kind: tch::Kind) -> Result<Model> {
    Model::load(ref_dir, device, kind)
        .with_context(|| format!("loading reference model {}", ref_dir.display()))
}
