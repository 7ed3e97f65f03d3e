//! `--full`: full fine-tuning of the policy against a second, frozen reference copy. One
//! iteration moves the base weights and writes a model folder that our loader and
//! transformers load; a zero learning rate leaves every weight bit-identical; the next
//! iteration continues the optimiser, KL controller and critic, with the KL measured
//! against --ref-model (not the rollouts' ref_logprobs); resume equals an uninterrupted run.
//! No test here draws from libtorch's global generator (LoRA dropout stays 0), so they can
//! share a test binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kl_between, model_tensors, run, s, score_with, World};
use ppo_update::state::{
    TrainingState, CRITIC_DIR, CRITIC_OPTIMIZER_FILE, METRICS_FILE, OPTIMIZER_FILE,
};
use rlhf_core::records::MetricRow;
use rlhf_nn::Model;
use rlhf_testkit::python;
use tch::{Device, Kind, Tensor};

fn metrics(dir: &Path) -> Vec<MetricRow> {
    rlhf_core::parquet_io::read_records::<MetricRow>(&dir.join(METRICS_FILE))
        .unwrap()
        .0
}

fn metric(rows: &[MetricRow], name: &str) -> f64 {
    rows.iter()
        .rev()
        .find(|r| r.metric == name)
        .map(|r| r.value)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The AdamW step count saved in an optimiser state file.
fn adam_steps(path: &Path) -> i64 {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == rlhf_algo::optim::STEP_KEY)
        .unwrap()
        .1
        .int64_value(&[0])
}

/// A world whose model folder also has a generation_config.json (copied into --full outputs).
fn world() -> World {
    let w = World::new();
    std::fs::write(
        w.model.join("generation_config.json"),
        "{\"eos_token_id\": 2}\n",
    )
    .unwrap();
    w
}

/// Rollouts of `model` (`k` = 2 samples of 4 prompts) scored by a reward that varies
/// within every prompt's group (the first response token's id mod 5), so every algorithm
/// gets a gradient whatever the tiny random model samples.
fn rollouts(w: &World, name: &str, model: &Path) -> (PathBuf, PathBuf) {
    let (r, _) = w.rollouts_of(name, model, None, 4, 2, false);
    let sc = score_with(w, &format!("{name}-varied"), &r, |row| {
        (row.response_tokens[0] % 5) as f32 / 4.0 + row.sample_index as f32 * 0.1
    });
    (r, sc)
}

/// `--full` arguments for one iteration from `model` (ref: the world's base) into `out`.
fn full_args(
    w: &World,
    model: &Path,
    r: &Path,
    sc: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--full",
        "--model",
        s(model),
        "--ref-model",
        s(&w.model),
        "--rollouts",
        s(r),
        "--scores",
        s(sc),
        "--out",
        s(out),
        "--minibatch-size",
        "4",
        "--micro-batch-size",
        "2",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn run_full(a: &[String]) -> anyhow::Result<ppo_update::Summary> {
    run(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn full_iteration_moves_base_weights_and_writes_a_loadable_model_folder() {
    let w = world();
    let (r, sc) = rollouts(&w, "it1", &w.model);
    let out = w.path("full-1");
    let sum = run_full(&full_args(
        &w,
        &w.model,
        &r,
        &sc,
        &out,
        &["--algo", "ppo", "--learning-rate", "1e-3"],
    ))
    .unwrap();
    assert_eq!(sum.optimizer_steps, 2);
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        OPTIMIZER_FILE,
        CRITIC_OPTIMIZER_FILE,
        "training_state.json",
        METRICS_FILE,
        &format!("{CRITIC_DIR}/adapter_config.json"),
    ] {
        assert!(out.join(f).is_file(), "{f} missing from the --full output");
    }
    assert!(
        !out.join("adapter_config.json").exists(),
        "a --full output is a model folder, not an adapter"
    );
    // every tensor is there, and the update moved them (the norms' too)
    let (before, after) = (model_tensors(&w.model), model_tensors(&out));
    let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after));
    let changed = before
        .iter()
        .zip(&after)
        .filter(|((_, a), (_, b))| !a.equal(b))
        .count();
    assert_eq!(
        changed,
        before.len(),
        "every base weight trains with --full"
    );
    // our loader takes it, and it is a different policy than the base
    Model::load(&out, Device::Cpu, Kind::Float).unwrap();
    assert!(kl_between(&out, &w.model, &r).abs() > 0.0);
    // state: full, the trained weights' id (what the next iteration checks), the ref's id
    let st = TrainingState::read(&out).unwrap().unwrap();
    assert!(st.full);
    let policy = Model::load(&out, Device::Cpu, Kind::Float).unwrap();
    let base = Model::load(&w.model, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(st.base_id, policy.base_id());
    assert_eq!(st.ref_id, Some(base.base_id()));
    let m = metrics(&out);
    let numel: i64 = base
        .base_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert_eq!(metric(&m, "run/trainable_params"), numel as f64);
    // f32 weights, gradients and two AdamW moments of every trained weight
    assert_eq!(metric(&m, "run/trained_state_bytes"), 16.0 * numel as f64);
    assert!(metric(&m, "run/critic_trainable_params") > 0.0);
    // the critic adapter sits on the reference copy
    let critic: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(CRITIC_DIR).join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(critic["base_model_name_or_path"], s(&w.model));
}

#[test]
fn full_zero_learning_rate_leaves_every_weight_bit_identical() {
    let w = world();
    let (r, sc) = rollouts(&w, "it1", &w.model);
    for algo in ["ppo", "grpo"] {
        let out = w.path(&format!("zero-{algo}"));
        run_full(&full_args(
            &w,
            &w.model,
            &r,
            &sc,
            &out,
            &["--algo", algo, "--learning-rate", "0", "--epochs", "2"],
        ))
        .unwrap();
        let (before, after) = (model_tensors(&w.model), model_tensors(&out));
        assert_eq!(before.len(), after.len());
        for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
            assert_eq!(n1, n2);
            assert!(
                t1.equal(t2),
                "{algo}: {n1} changed with a zero learning rate"
            );
        }
        let m = metrics(&out);
        assert!(metric(&m, "train/grad_norm") > 0.0, "{algo}: no gradient");
        assert_eq!(adam_steps(&out.join(OPTIMIZER_FILE)), 4);
    }
}

#[test]
fn full_next_iteration_continues_the_optimizer_and_measures_kl_against_ref_model() {
    let w = world();
    let (r, sc) = rollouts(&w, "it1", &w.model);
    let it1 = w.path("full-1");
    let common = [
        "--algo",
        "reinforce",
        "--learning-rate",
        "1e-2",
        "--kl-coef",
        "0.1",
        "--kl-target",
        "0.001",
        "--kl-horizon",
        "100",
    ];
    run_full(&full_args(&w, &w.model, &r, &sc, &it1, &common)).unwrap();
    let st1 = TrainingState::read(&it1).unwrap().unwrap();

    // rollouts sampled from the full policy: their ref_logprobs are the policy's own
    let (r2, sc2) = rollouts(&w, "it2", &it1);
    let it2 = w.path("full-2");
    let mut a = full_args(&w, &it1, &r2, &sc2, &it2, &common);
    a.extend(["--iteration", "2"].map(String::from));
    let sum2 = run_full(&a).unwrap();
    assert_eq!(sum2.kl_coef, st1.kl_controller.value(), "beta carried over");
    let st2 = TrainingState::read(&it2).unwrap().unwrap();
    assert_eq!((st2.optimizer_steps, st2.rollouts_seen), (4, 16));
    assert_eq!(
        adam_steps(&it2.join(OPTIMIZER_FILE)),
        4,
        "AdamW moments carried"
    );
    assert_eq!(adam_steps(&it2.join(CRITIC_OPTIMIZER_FILE)), 4);
    // the KL is to --ref-model, not to the rollouts' (self-referential) ref_logprobs
    let kl = kl_between(&it1, &w.model, &r2);
    assert!(
        kl.abs() > 1e-4,
        "the first iteration should move the policy: {kl}"
    );
    let measured = metric(&metrics(&it2), "iter/kl_ref");
    assert!(
        (measured - kl).abs() < 1e-3 * kl.abs().max(1.0),
        "iter/kl_ref {measured} vs KL(it1 || base) {kl}"
    );

    // --reset-optimizer starts the moments afresh: another step count, other weights
    let reset = w.path("full-2-reset");
    let mut b = full_args(&w, &it1, &r2, &sc2, &reset, &common);
    b.push("--reset-optimizer".into());
    run_full(&b).unwrap();
    assert_eq!(adam_steps(&reset.join(OPTIMIZER_FILE)), 2);
    let differs = model_tensors(&it2)
        .iter()
        .zip(&model_tensors(&reset))
        .any(|((_, x), (_, y))| !x.equal(y));
    assert!(differs, "carried moments should change the update");

    // another reference than the previous iterations' is refused, naming both
    let mut c = full_args(&w, &it1, &r2, &sc2, &w.path("bad"), &common);
    let pos = c.iter().position(|x| x == "--ref-model").unwrap();
    c[pos + 1] = s(&it2).to_string();
    let err = format!("{:#}", run_full(&c).unwrap_err());
    assert!(err.contains("reference model"), "{err}");
    assert!(
        err.contains("--ref-model of the previous iterations"),
        "{err}"
    );
}

#[test]
fn full_resume_after_a_stop_equals_an_uninterrupted_run() {
    let w = world();
    let (r, sc) = rollouts(&w, "it1", &w.model);
    let extra = [
        "--algo",
        "ppo",
        "--learning-rate",
        "1e-2",
        "--epochs",
        "2",
        "--seed",
        "4",
    ];
    let whole = w.path("whole");
    run_full(&full_args(&w, &w.model, &r, &sc, &whole, &extra)).unwrap();
    let resumed = w.path("resumed");
    let mut b = full_args(&w, &w.model, &r, &sc, &resumed, &extra);
    b.extend(["--checkpoint-every", "2", "--stop-after-steps", "3"].map(String::from));
    let err = run_full(&b).unwrap_err();
    assert!(format!("{err:#}").contains("stopped after 3"), "{err:#}");
    assert!(!resumed.exists());
    b.retain(|x| x != "--stop-after-steps" && x != "3");
    b.push("--resume".into());
    run_full(&b).unwrap();
    for file in [
        "model.safetensors",
        "config.json",
        OPTIMIZER_FILE,
        CRITIC_OPTIMIZER_FILE,
        "training_state.json",
        &format!("{CRITIC_DIR}/adapter_model.safetensors"),
    ] {
        let x = std::fs::read(whole.join(file)).unwrap();
        let y = std::fs::read(resumed.join(file)).unwrap();
        assert!(
            x == y,
            "{file} differs between the uninterrupted and the resumed run"
        );
    }
    let (m1, m2) = (metrics(&whole), metrics(&resumed));
    assert_eq!(m1.len(), m2.len());
    for (x, y) in m1.iter().zip(&m2) {
        assert_eq!((x.step, &x.metric, x.value), (y.step, &y.metric, y.value));
    }
}

/// transformers' AutoModelForCausalLM loads the --full output as it is, with the logits
/// our loader computes from it.
#[test]
fn transformers_loads_the_full_output() {
    let py = python();
    let w = world();
    let (r, sc) = rollouts(&w, "it1", &w.model);
    let out = w.path("full-1");
    run_full(&full_args(
        &w,
        &w.model,
        &r,
        &sc,
        &out,
        &["--algo", "rloo", "--learning-rate", "1e-2"],
    ))
    .unwrap();
    let ids: Vec<i64> = vec![1, 5, 9, 3, 7, 11, 2, 4];
    let theirs = w.path("hf_logits.safetensors");
    let script = r#"
import sys, json, os
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    out = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
save_file({"out": out.float().contiguous()}, sys.argv[3])
"#;
    let o = Command::new(py)
        .args(["-c", script, s(&out)])
        .arg(serde_json::to_string(&ids).unwrap())
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs = Tensor::read_safetensors(&theirs).unwrap().remove(0).1;
    let m = Model::load(&out, Device::Cpu, Kind::Float).unwrap();
    let _g = tch::no_grad_guard();
    let input = Tensor::from_slice(&ids).view([1, -1]);
    let hidden = m.forward(&input, &input.ones_like(), None, false).unwrap();
    let ours = m.lm_logits(&hidden, None, false).unwrap();
    let diff = (ours - &theirs).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "logits differ from transformers' by {diff}");
}
