//! The reward model being trained: a named adapter with a `Score` head on the shared base.
//! LoRA mode trains the adapter's LoRA factors and head; --full trains every base weight
//! plus the head through the very same forward (the adapter is attached with the same
//! LoRA configuration, its factors frozen at B = 0 so they add nothing). Scores are read at
//! the last non-pad token of right-padded sequences, as transformers'
//! *ForSequenceClassification does.

use std::path::Path;

use anyhow::{Context, Result};
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::lora::{HeadKind, LoraConfig};
use rlhf_nn::scoring::last_token_scores;
use rlhf_nn::Model;
use tch::{Device, Kind, Tensor};

use crate::data::Seq;

/// How the reward model is parameterised.
#[derive(Debug, Clone, PartialEq)]
pub enum Tuning {
    /// LoRA factors on the target modules plus the score head.
    Lora(LoraConfig),
    /// Every base weight plus the score head (the LoRA factors of the configuration are
    /// attached but frozen at zero effect, so the forward is the LoRA run's).
    Full(LoraConfig),
}

impl Tuning {
    /// The LoRA configuration attached in either mode.
    pub fn lora(&self) -> &LoraConfig {
        match self {
            Tuning::Lora(c) | Tuning::Full(c) => c,
        }
    }

    /// True for --full.
    pub fn is_full(&self) -> bool {
        matches!(self, Tuning::Full(_))
    }
}

/// A reward model: the model, its adapter name and what is trained.
pub struct RewardModel<'m> {
    pub model: &'m mut Model,
    pub adapter: String,
    pub tuning: Tuning,
    pub pad_id: i64,
}

impl<'m> RewardModel<'m> {
    /// Attaches a fresh adapter (A random, B zero, head drawn from `seed`) named `adapter`.
    pub fn attach(
        model: &'m mut Model,
        adapter: &str,
        tuning: Tuning,
        pad_id: i64,
        seed: u64,
    ) -> Result<RewardModel<'m>> {
        model
            .add_adapter(adapter, tuning.lora(), Some(HeadKind::Score), seed)
            .with_context(|| format!("attaching adapter `{adapter}`"))?;
        if tuning.is_full() {
            for (name, t) in model.adapter_named_parameters(adapter)? {
                if name.contains(".lora_") {
                    let _ = t.set_requires_grad(false);
                }
            }
        }
        model.set_base_trainable(tuning.is_full());
        Ok(RewardModel {
            model,
            adapter: adapter.to_string(),
            tuning,
            pad_id,
        })
    }

    /// The trainable tensors, named (adapter tensors as in the PEFT file; base tensors as in
    /// the checkpoint, prefixed `base.`).
    pub fn trainable(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.model.adapter_named_parameters(&self.adapter)?;
        if self.tuning.is_full() {
            out.retain(|(n, _)| !n.contains(".lora_"));
            out.extend(
                self.model
                    .base_parameters()
                    .into_iter()
                    .map(|(n, t)| (format!("base.{n}"), t)),
            );
        }
        Ok(out)
    }

    /// Scores `(n,)` f32 of sequences at each one's last token, through rlhf-nn's
    /// `last_token_scores` (the scoring score-rewards uses). With `train`, LoRA dropout is
    /// on and the graph is kept for backward.
    pub fn scores(&self, seqs: &[&Seq], train: bool) -> Result<Tensor> {
        // SeqBatch needs a non-empty prompt; the concatenation (all that scoring sees) is
        // unchanged by moving the first response token into an empty prompt.
        let rows: Vec<(&[i32], &[i32])> = seqs
            .iter()
            .map(|s| {
                if s.prompt.is_empty() && !s.response.is_empty() {
                    (&s.response[..1], &s.response[1..])
                } else {
                    (&s.prompt[..], &s.response[..])
                }
            })
            .collect();
        let batch = SeqBatch::new(&rows, self.pad_id as i32, self.model.device())?;
        Ok(last_token_scores(
            self.model,
            Some(&self.adapter),
            &batch,
            train,
        )?)
    }

    /// Scores many sequences without grad, in length-sorted chunks of `chunk`.
    pub fn score_all(&self, seqs: &[Seq], chunk: usize) -> Result<Vec<f64>> {
        let _guard = tch::no_grad_guard();
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![0f64; seqs.len()];
        for part in order.chunks(chunk.max(1)) {
            let batch: Vec<&Seq> = part.iter().map(|&i| &seqs[i]).collect();
            let s = to_vec(&self.scores(&batch, false)?)?;
            for (k, &i) in part.iter().enumerate() {
                out[i] = s[k];
            }
        }
        Ok(out)
    }

    /// Detaches the adapter from the base (after saving), freezing the base again.
    pub fn detach(self) -> Result<()> {
        self.model.set_base_trainable(false);
        Ok(self.model.remove_adapter(&self.adapter)?)
    }

    /// Writes the trained model into `dir`: the PEFT adapter files (LoRA), or a full
    /// transformers *ForSequenceClassification folder (--full) with the tokenizer files of
    /// the base folder `base_dir`.
    pub fn save(&self, dir: &Path, base_dir: &Path) -> Result<()> {
        match self.tuning {
            Tuning::Lora(_) => self
                .model
                .save_adapter(&self.adapter, dir)
                .with_context(|| format!("writing the adapter into {}", dir.display())),
            Tuning::Full(_) => {
                save_full(self.model, &self.adapter, self.pad_id, dir)?;
                rlhf_core::tokenizer::copy_model_files(
                    base_dir,
                    dir,
                    rlhf_core::tokenizer::TOKENIZER_FILES,
                )?;
                Ok(())
            }
        }
    }
}

/// Writes base weights plus the adapter's score head as a *ForSequenceClassification folder.
fn save_full(model: &Model, adapter: &str, pad_id: i64, dir: &Path) -> Result<()> {
    model.save_pretrained(dir)?;
    let mut tensors: Vec<(String, Tensor)> = model
        .base_named_tensors()
        .into_iter()
        .filter(|(n, _)| n != "lm_head.weight" && n != "score.weight")
        .collect();
    let head = model
        .adapter_named_parameters(adapter)?
        .into_iter()
        .find(|(n, _)| n.ends_with("score.weight"))
        .context("the reward adapter has no score head")?;
    tensors.push(("score.weight".into(), head.1));
    let cpu: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let weights = dir.join("model.safetensors");
    Tensor::write_safetensors(&cpu, &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)?;
    if let Some(m) = cfg.as_object_mut() {
        let arch = match model.config().arch {
            rlhf_nn::config::Arch::Llama => "LlamaForSequenceClassification",
            rlhf_nn::config::Arch::Gpt2 => "GPT2ForSequenceClassification",
        };
        m.insert("architectures".into(), serde_json::json!([arch]));
        m.insert("num_labels".into(), serde_json::json!(1));
        m.insert("pad_token_id".into(), serde_json::json!(pad_id));
    }
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)? + "\n")
        .with_context(|| format!("writing {}", cfg_path.display()))
}

/// A 1-d tensor as f64 values.
pub fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous();
    Ok(Vec::<f64>::try_from(&t)?)
}
