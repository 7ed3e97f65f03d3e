//! Test fixtures: a tiny random Llama saved as a model folder, a "drifted" policy adapter,
//! rollouts sampled from a policy with their reference log-probabilities, and scores from a
//! programmatic reward (the share of response tokens equal to a target token).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rlhf_core::lineage::Lineage;
use rlhf_core::records::{RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::generate::{generate, SamplingParams};
use rlhf_nn::{scoring, LoraConfig, Model, ModelConfig};
use tch::{Device, Kind, Tensor};

/// The token the programmatic reward likes.
pub const TARGET: i32 = 7;

/// A temporary world with a tiny base model.
pub struct World {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
        cfg.vocab_size = 48;
        cfg.initializer_range = 0.2;
        let m = Model::random(&cfg, Device::Cpu, Kind::Float, 11).unwrap();
        let model = dir.path().join("model");
        m.save_pretrained(&model).unwrap();
        World { dir, model }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn load(&self) -> Model {
        Model::load(&self.model, Device::Cpu, Kind::Float).unwrap()
    }

    /// A policy adapter whose B factors are random, so the policy differs from the base.
    pub fn drifted_adapter(&self, name: &str, scale: f64) -> PathBuf {
        let mut m = self.load();
        let mut cfg = LoraConfig::default_for(m.config().arch);
        cfg.target_modules = vec!["all-linear".into()];
        cfg.dropout = 0.0;
        m.add_adapter("p", &cfg, None, 5).unwrap();
        rlhf_testkit::randomize_adapter(&m, "p", rlhf_testkit::Redraw::LoraB, scale, 3);
        let out = self.path(name);
        m.save_adapter("p", &out).unwrap();
        out
    }

    /// Samples `k` responses for each of `n_prompts` prompts from the base (+ adapter), with
    /// reference log-probabilities, and scores them. Returns (rollouts, scores) paths.
    pub fn rollouts(
        &self,
        name: &str,
        adapter: Option<&Path>,
        n_prompts: usize,
        k: usize,
        zero_reward: bool,
    ) -> (PathBuf, PathBuf) {
        self.rollouts_of(name, &self.model, adapter, n_prompts, k, zero_reward)
    }

    /// As [`World::rollouts`] from the model folder `model` (e.g. a `--full` output; its
    /// "reference" log-probabilities are then the model's own, as sample-rollouts records
    /// them without an adapter).
    pub fn rollouts_of(
        &self,
        name: &str,
        model: &Path,
        adapter: Option<&Path>,
        n_prompts: usize,
        k: usize,
        zero_reward: bool,
    ) -> (PathBuf, PathBuf) {
        let mut m = Model::load(model, Device::Cpu, Kind::Float).unwrap();
        if let Some(a) = adapter {
            m.load_adapter("p", a).unwrap();
        }
        let policy = adapter.map(|_| "p");
        let prompts: Vec<Vec<i32>> = (0..n_prompts)
            .map(|i| {
                (0..(3 + i % 3))
                    .map(|j| ((i * 7 + j * 5) % 40 + 1) as i32)
                    .collect()
            })
            .collect();
        let mut all_prompts = Vec::new();
        let mut seeds = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            for s in 0..k {
                all_prompts.push(p.clone());
                seeds.push((i * 100 + s) as u64);
            }
        }
        let params = SamplingParams {
            max_new_tokens: 6,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            eos_ids: vec![2],
        };
        let gens = generate(&m, policy, &all_prompts, &seeds, &params, 0, None).unwrap();
        let pairs: Vec<(Vec<i32>, Vec<i32>)> = all_prompts
            .iter()
            .cloned()
            .zip(gens.iter().map(|g| g.tokens.clone()))
            .collect();
        let batch = SeqBatch::new(&pairs, 0, Device::Cpu).unwrap();
        let refs = batch
            .response_values(&scoring::token_logprobs(&m, None, &batch, false).unwrap())
            .unwrap();
        let mut rows = Vec::new();
        let mut table = ScoresTable::default();
        let mut gold = Vec::new();
        for (j, g) in gens.iter().enumerate() {
            let (pi, s) = (j / k, j % k);
            let id = format!("r{pi}-{s}");
            let share =
                g.tokens.iter().filter(|&&t| t == TARGET).count() as f32 / g.tokens.len() as f32;
            rows.push(RolloutRow {
                rollout_id: id.clone(),
                prompt_id: format!("p{pi}"),
                iteration: 1,
                sample_index: s as i32,
                prompt: String::new(),
                messages: None,
                response: String::new(),
                prompt_tokens: all_prompts[j].clone(),
                response_tokens: g.tokens.clone(),
                logprobs: g.logprobs.clone(),
                ref_logprobs: Some(refs[j].clone()),
                finish_reason: g.finish.as_str().to_string(),
                policy_id: "test".into(),
                seed: seeds[j],
            });
            table.rollout_id.push(id);
            table.reward.push(if zero_reward { 0.0 } else { share });
            table.penalty.push(0.0);
            gold.push(Some(share));
        }
        table.sources.push(("gold".into(), gold));
        let r = self.path(&format!("{name}-rollouts.parquet"));
        let sc = self.path(&format!("{name}-scores.parquet"));
        rlhf_core::parquet_io::write_records(
            &r,
            &rows,
            &Lineage::new("test", "0", Artifact::Rollouts),
        )
        .unwrap();
        table
            .write(&sc, &Lineage::new("test", "0", Artifact::Scores))
            .unwrap();
        (r, sc)
    }

    /// Mean over the rollouts of the summed per-token log-ratio log pi - log ref (k1 KL).
    pub fn kl_to_ref(&self, adapter: &Path, rollouts: &Path) -> f64 {
        let mut m = self.load();
        m.load_adapter("p", adapter).unwrap();
        let (rows, _) = rlhf_core::parquet_io::read_records::<RolloutRow>(rollouts).unwrap();
        let pairs: Vec<(Vec<i32>, Vec<i32>)> = rows
            .iter()
            .map(|r| (r.prompt_tokens.clone(), r.response_tokens.clone()))
            .collect();
        let batch = SeqBatch::new(&pairs, 0, Device::Cpu).unwrap();
        let lp = scoring::token_logprobs(&m, Some("p"), &batch, false).unwrap();
        let rf = scoring::token_logprobs(&m, None, &batch, false).unwrap();
        let kl = ((lp - rf) * &batch.response_mask)
            .sum(Kind::Double)
            .double_value(&[]);
        kl / rows.len() as f64
    }
}

/// Scores `rollouts` with `reward(row)` (written beside them as `<name>-scores.parquet`).
pub fn score_with(
    w: &World,
    name: &str,
    rollouts: &Path,
    reward: impl Fn(&RolloutRow) -> f32,
) -> PathBuf {
    let (rows, _) = rlhf_core::parquet_io::read_records::<RolloutRow>(rollouts).unwrap();
    let mut table = ScoresTable::default();
    for r in &rows {
        table.rollout_id.push(r.rollout_id.clone());
        table.reward.push(reward(r));
        table.penalty.push(0.0);
    }
    let out = w.path(&format!("{name}-scores.parquet"));
    table
        .write(&out, &Lineage::new("test", "0", Artifact::Scores))
        .unwrap();
    out
}

/// Mean over the rollouts of the summed per-token log-ratio log pi - log ref (k1 KL)
/// between two full model folders.
pub fn kl_between(policy: &Path, reference: &Path, rollouts: &Path) -> f64 {
    let load = |d: &Path| Model::load(d, Device::Cpu, Kind::Float).unwrap();
    let (p, r) = (load(policy), load(reference));
    let (rows, _) = rlhf_core::parquet_io::read_records::<RolloutRow>(rollouts).unwrap();
    let pairs: Vec<(Vec<i32>, Vec<i32>)> = rows
        .iter()
        .map(|r| (r.prompt_tokens.clone(), r.response_tokens.clone()))
        .collect();
    let batch = SeqBatch::new(&pairs, 0, Device::Cpu).unwrap();
    let lp = scoring::token_logprobs(&p, None, &batch, false).unwrap();
    let rf = scoring::token_logprobs(&r, None, &batch, false).unwrap();
    let kl = ((lp - rf) * &batch.response_mask)
        .sum(Kind::Double)
        .double_value(&[]);
    kl / rows.len() as f64
}

/// The tensors of a model folder's model.safetensors, sorted by name.
pub fn model_tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Runs ppo-update in-process with these arguments.
pub fn run(args: &[&str]) -> anyhow::Result<ppo_update::Summary> {
    use clap::Parser;
    let mut full = vec!["ppo-update", "--no-progress", "--device", "cpu"];
    full.extend_from_slice(args);
    let cli = ppo_update::Cli::try_parse_from(full)?;
    let s = ppo_update::Settings::from_cli(&cli)?;
    ppo_update::run(&s)
}

/// The tensors of an adapter folder, sorted by name.
pub fn adapter_tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
