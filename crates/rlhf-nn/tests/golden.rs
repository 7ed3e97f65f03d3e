//! Golden tests against transformers and peft (fixtures from scripts/make_golden.py, found in
//! $RLHF_GOLDEN_DIR, default <repo>/tests/fixtures/generated; `make test` builds them).
//! Missing fixtures FAIL these tests with a message saying how to build them.
//!
//! Tolerances: logits and scores within `logit_atol` (2e-4, float32, stated in
//! reference.json); greedy tokens identical; merged weights within 1e-5.
//!
//! The models run on `RLHF_TEST_DEVICE` (default `cpu`; `cuda` on a GPU machine, see
//! scripts/gpu-check.sh) with the same tolerances; results come back to the CPU to be
//! compared with the references.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rlhf_nn::batch::SeqBatch;
use rlhf_nn::generate::{generate, SamplingParams};
use rlhf_nn::scoring::last_token_scores;
use rlhf_nn::{HeadKind, LoraConfig, Model};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("RLHF_GOLDEN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/fixtures/generated"));
    assert!(
        dir.join("reference.json").is_file() && dir.join("reference.safetensors").is_file(),
        "golden fixtures missing in {} (RLHF_GOLDEN_DIR). Build them with `make golden`, or \
         `$(scripts/setup-python.sh)/bin/python scripts/make_golden.py --out {}`",
        dir.display(),
        dir.display()
    );
    dir
}

/// The device the models run on: `RLHF_TEST_DEVICE`, default cpu.
fn device() -> Device {
    let name = std::env::var("RLHF_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    rlhf_nn::parse_device(&name).unwrap_or_else(|e| panic!("RLHF_TEST_DEVICE: {e}"))
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RLHF_PYTHON") {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("scripts/setup-python.sh"))
        .output()
        .expect("cannot run scripts/setup-python.sh (set RLHF_PYTHON)");
    assert!(out.status.success(), "scripts/setup-python.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python")
}

struct Golden {
    dir: PathBuf,
    refs: HashMap<String, Tensor>,
    meta: Value,
}

impl Golden {
    fn open() -> Self {
        let dir = golden_dir();
        let refs = Tensor::read_safetensors(dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        let meta =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Golden { dir, refs, meta }
    }
    fn t(&self, key: &str) -> &Tensor {
        self.refs
            .get(key)
            .unwrap_or_else(|| panic!("reference.safetensors lacks `{key}`: rebuild the fixtures"))
    }
    fn atol(&self) -> f64 {
        self.meta["logit_atol"].as_f64().unwrap()
    }
    fn model(&self, name: &str) -> Model {
        Model::load(&self.dir.join(name), device(), Kind::Float).unwrap()
    }
    fn ids(&self) -> (Tensor, Tensor) {
        (
            self.t("input_ids").shallow_clone(),
            self.t("attention_mask").shallow_clone(),
        )
    }
    fn prompts(&self) -> Vec<Vec<i32>> {
        serde_json::from_value(self.meta["prompts"].clone()).unwrap()
    }
    fn greedy(&self, case: &str, key: &str) -> Vec<Vec<i32>> {
        serde_json::from_value(self.meta["cases"][case][key].clone()).unwrap()
    }
    /// Rows of the reference inputs as token lists (pads removed), for SeqBatch.
    fn rows(&self) -> Vec<(Vec<i32>, Vec<i32>)> {
        let (ids, mask) = self.ids();
        let ids = Vec::<Vec<i64>>::try_from(ids).unwrap();
        let mask = Vec::<Vec<i64>>::try_from(mask).unwrap();
        ids.iter()
            .zip(&mask)
            .map(|(r, m)| {
                (
                    r.iter()
                        .zip(m)
                        .filter(|(_, &k)| k == 1)
                        .map(|(&t, _)| t as i32)
                        .collect(),
                    vec![],
                )
            })
            .collect()
    }
}

/// The model's logits, computed on its device, returned on the CPU.
fn logits(m: &Model, adapter: Option<&str>, ids: &Tensor, mask: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let (ids, mask) = (ids.to_device(m.device()), mask.to_device(m.device()));
    m.lm_logits(
        &m.forward(&ids, &mask, adapter, false).unwrap(),
        adapter,
        false,
    )
    .unwrap()
    .to_device(Device::Cpu)
}

/// Max |a - b| over positions where mask = 1.
fn masked_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    ((a - b).abs() * m).max().double_value(&[])
}

/// Where `masked_diff` finds its largest difference, for a failure message: the (row,
/// position, vocab) index, both values, the largest |b|, and how many entries differ by
/// more than `tol` (one outlier and a drift everywhere call for different fixes).
fn largest_difference(a: &Tensor, b: &Tensor, mask: &Tensor, tol: f64) -> String {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    let d = (a - b).abs() * &m;
    let size = d.size();
    let flat = d.argmax(None, false).int64_value(&[]);
    let (v, p) = (size[2], size[1]);
    let (row, pos, tok) = (flat / (p * v), flat / v % p, flat % v);
    format!(
        "at [{row}, {pos}, {tok}] ours {:.6} reference {:.6}; max |reference| {:.3}; \
         {} entries over {tol:.1e}",
        a.double_value(&[row, pos, tok]),
        b.double_value(&[row, pos, tok]),
        (b * &m).abs().max().double_value(&[]),
        d.gt(tol).sum(Kind::Int64).int64_value(&[]),
    )
}

fn check_logits(g: &Golden, case: &str, m: &Model, adapter: Option<&str>) {
    let (ids, mask) = g.ids();
    let (ours, theirs) = (
        logits(m, adapter, &ids, &mask),
        g.t(&format!("{case}.logits")),
    );
    let d = masked_diff(&ours, theirs, &mask);
    assert!(
        d < g.atol(),
        "{case}: logits differ from transformers by {d:.3e} (tolerance {}; {})",
        g.atol(),
        largest_difference(&ours, theirs, &mask, g.atol())
    );
}

fn check_greedy(g: &Golden, case: &str, m: &Model, adapter: Option<&str>) {
    let n = g.meta["max_new_tokens"].as_u64().unwrap() as usize;
    let params = SamplingParams {
        max_new_tokens: n,
        temperature: 0.0,
        ..Default::default()
    };
    let prompts = g.prompts();
    let seeds: Vec<u64> = (0..prompts.len() as u64).collect();
    let ours: Vec<Vec<i32>> = generate(m, adapter, &prompts, &seeds, &params, 0, None)
        .unwrap()
        .into_iter()
        .map(|x| x.tokens)
        .collect();
    assert_eq!(
        ours,
        g.greedy(case, "greedy"),
        "{case}: greedy differs from transformers (each prompt alone)"
    );
    assert_eq!(
        ours,
        g.greedy(case, "greedy_batched"),
        "{case}: greedy differs from transformers (left-padded batch)"
    );
}

#[test]
fn base_models_match_transformers() {
    let g = Golden::open();
    for case in ["llama_gqa", "qwen2_tied", "gpt2"] {
        let m = g.model(case);
        check_logits(&g, case, &m, None);
        check_greedy(&g, case, &m, None);
    }
}

#[test]
fn sharded_and_unprefixed_checkpoints_load() {
    let g = Golden::open();
    check_logits(&g, "llama_gqa", &g.model("llama_gqa_sharded"), None);
    check_logits(&g, "gpt2", &g.model("gpt2_bare"), None);
}

#[test]
fn bf16_stays_close_to_f32() {
    let g = Golden::open();
    let m = Model::load(&g.dir.join("llama_gqa"), device(), Kind::BFloat16).unwrap();
    let (ids, mask) = g.ids();
    let l = logits(&m, None, &ids, &mask);
    assert_eq!(l.kind(), Kind::BFloat16);
    let reference = g.t("llama_gqa.logits");
    let scale = reference.abs().max().double_value(&[]);
    let d = masked_diff(&l.to_kind(Kind::Float), reference, &mask);
    // bf16 keeps 8 mantissa bits: allow 3% of the largest logit.
    assert!(
        d < 0.03 * scale,
        "bf16 logits differ by {d:.3e} (max |logit| {scale:.2})"
    );
}

#[test]
fn peft_adapters_load_here_and_merge_like_peft() {
    let g = Golden::open();
    for (case, base) in [("llama_gqa_lora", "llama_gqa"), ("gpt2_lora", "gpt2")] {
        let mut m = g.model(base);
        m.load_adapter("a", &g.dir.join(case)).unwrap();
        check_logits(&g, case, &m, Some("a"));
        check_greedy(&g, case, &m, Some("a"));
        let (ids, mask) = g.ids();
        let unmerged = logits(&m, Some("a"), &ids, &mask);
        m.merge_adapter("a").unwrap();
        assert!(
            masked_diff(&unmerged, &logits(&m, None, &ids, &mask), &mask) < 1e-4,
            "{case}: merged != unmerged"
        );
        let ours: HashMap<String, Tensor> = m
            .base_named_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.to_device(Device::Cpu)))
            .collect();
        let prefix = format!("{case}.merged.");
        let mut n = 0;
        for (k, want) in g.refs.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let name = &k[prefix.len()..];
            let got = ours
                .get(name)
                .unwrap_or_else(|| panic!("{case}: no base tensor `{name}`"));
            let d = (got - want).abs().max().double_value(&[]);
            assert!(
                d < 1e-5,
                "{case}: merged `{name}` differs from peft's merge by {d:.3e}"
            );
            n += 1;
        }
        assert!(n > 0, "{case}: no merged reference weights");
    }
}

#[test]
fn sequence_classification_scores_match() {
    let g = Golden::open();
    let rows = g.rows();
    let batch = SeqBatch::new(&rows, 0, device()).unwrap();
    let m = g.model("llama_seqcls");
    let s = last_token_scores(&m, None, &batch, false)
        .unwrap()
        .to_device(Device::Cpu);
    let d = (&s - g.t("llama_seqcls.scores"))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < g.atol(), "llama_seqcls: scores differ by {d:.3e}");
    // A PEFT SEQ_CLS adapter (LoRA + score in modules_to_save) on the causal-LM base.
    let mut m = g.model("llama_gqa");
    m.load_adapter("rm", &g.dir.join("llama_seqcls_lora"))
        .unwrap();
    let s = last_token_scores(&m, Some("rm"), &batch, false)
        .unwrap()
        .to_device(Device::Cpu);
    let d = (&s - g.t("llama_seqcls_lora.scores"))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < g.atol(), "llama_seqcls_lora: scores differ by {d:.3e}");
}

fn perturb(m: &Model, name: &str) {
    let _g = tch::no_grad_guard();
    for (i, (n, t)) in m
        .adapter_named_parameters(name)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        if n.contains("lora_B") || n == "score.weight" {
            let r = rlhf_nn::rng::normal_tensor(100 + i as u64, &n, &t.size(), 0.3);
            t.shallow_clone().copy_(&r);
        }
    }
}

/// Runs peft on our saved adapter and returns its logits (or scores).
fn peft_output(g: &Golden, base: &str, adapter: &Path, seq_cls: bool) -> Tensor {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("inputs.safetensors");
    let out = tmp.path().join("out.safetensors");
    let (ids, mask) = g.ids();
    Tensor::write_safetensors(&[("input_ids", &ids), ("attention_mask", &mask)], &inputs).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("scripts/make_golden.py"))
        .arg("peft-logits")
        .arg("--base")
        .arg(g.dir.join(base))
        .arg("--adapter")
        .arg(adapter)
        .arg("--inputs")
        .arg(&inputs)
        .arg("--out")
        .arg(&out);
    if seq_cls {
        cmd.arg("--seq-cls");
    }
    let res = cmd.output().expect("cannot run the Python reference");
    assert!(
        res.status.success(),
        "peft failed on our adapter:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    Tensor::read_safetensors(&out).unwrap().remove(0).1
}

#[test]
fn our_adapters_load_in_peft() {
    let g = Golden::open();
    let (ids, mask) = g.ids();
    for (base, targets, head) in [
        (
            "llama_gqa",
            vec!["q_proj", "v_proj", "o_proj", "up_proj"],
            false,
        ),
        ("llama_gqa", vec!["q_proj", "down_proj", "lm_head"], false),
        ("gpt2", vec!["c_attn", "c_fc"], false),
        ("llama_gqa", vec!["q_proj", "v_proj"], true),
    ] {
        let mut m = g.model(base);
        let cfg = LoraConfig {
            r: 4,
            alpha: 10.0,
            dropout: 0.05,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora: base == "gpt2",
        };
        m.add_adapter("a", &cfg, head.then_some(HeadKind::Score), 3)
            .unwrap();
        perturb(&m, "a");
        let dir = tempfile::tempdir().unwrap();
        m.save_adapter("a", dir.path()).unwrap();
        let theirs = peft_output(&g, base, dir.path(), head);
        if head {
            let batch = SeqBatch::new(&g.rows(), 0, device()).unwrap();
            let ours = last_token_scores(&m, Some("a"), &batch, false)
                .unwrap()
                .to_device(Device::Cpu);
            let d = (&ours - &theirs).abs().max().double_value(&[]);
            assert!(
                d < g.atol(),
                "{base} SEQ_CLS adapter: peft scores differ by {d:.3e}"
            );
        } else {
            let ours = logits(&m, Some("a"), &ids, &mask);
            let d = masked_diff(&ours, &theirs, &mask);
            assert!(
                d < g.atol(),
                "{base} adapter {targets:?}: peft logits differ by {d:.3e} ({})",
                largest_difference(&ours, &theirs, &mask, g.atol())
            );
        }
    }
}
