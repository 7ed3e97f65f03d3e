//! Resume: a run stopped within an iteration (--stop-after-steps, after a checkpoint) and
//! restarted with --resume reaches the same adapter, critic, optimiser state and metrics as an
//! uninterrupted run. Alone in its own test binary: LoRA dropout draws from libtorch's
//! process-wide generator, which tests running in parallel threads would share.

mod common;

use common::{run, s, World};
use ppo_update::state::{TrainingState, CRITIC_DIR, METRICS_FILE};
use rlhf_core::records::MetricRow;

fn metrics(dir: &std::path::Path) -> Vec<MetricRow> {
    rlhf_core::parquet_io::read_records::<MetricRow>(&dir.join(METRICS_FILE))
        .unwrap()
        .0
}

#[test]
fn resume_after_a_stop_equals_an_uninterrupted_run() {
    let w = World::new();
    let (r, sc) = w.rollouts("it1", None, 4, 2, false);
    let args = |out: &str| -> Vec<String> {
        [
            "--model",
            s(&w.model),
            "--rollouts",
            s(&r),
            "--scores",
            s(&sc),
            "--out",
            out,
            "--algo",
            "ppo",
            "--lora-dropout",
            "0.1",
            "--learning-rate",
            "1e-2",
            "--epochs",
            "2",
            "--minibatch-size",
            "2",
            "--micro-batch-size",
            "1",
            // minibatches cut from shuffled prompts (2 samples each): the order a resume must
            // reproduce (the other tests shuffle rollouts)
            "--minibatch-by-prompt",
            "--kl-target",
            "1.0",
            "--seed",
            "4",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let full = w.path("full");
    let a = args(s(&full));
    run(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();

    let resumed = w.path("resumed");
    let mut b = args(s(&resumed));
    b.extend(["--checkpoint-every", "2", "--stop-after-steps", "5"].map(String::from));
    let err = run(&b.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
    assert!(format!("{err:#}").contains("stopped after 5"), "{err:#}");
    assert!(
        !resumed.exists(),
        "a stopped run must not leave an output folder"
    );
    assert!(w
        .path("resumed.checkpoint")
        .join("checkpoint.json")
        .is_file());
    b.retain(|x| x != "--stop-after-steps" && x != "5");
    b.push("--resume".into());
    run(&b.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(
        !w.path("resumed.checkpoint").exists(),
        "checkpoint removed after success"
    );

    for file in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.safetensors",
        "critic_optimizer.safetensors",
        "training_state.json",
        &format!("{CRITIC_DIR}/adapter_model.safetensors"),
    ] {
        let x = std::fs::read(full.join(file)).unwrap();
        let y = std::fs::read(resumed.join(file)).unwrap();
        assert!(
            x == y,
            "{file} differs between the uninterrupted and the resumed run"
        );
    }
    let (m1, m2) = (metrics(&full), metrics(&resumed));
    assert_eq!(m1.len(), m2.len());
    for (x, y) in m1.iter().zip(&m2) {
        assert_eq!((x.step, &x.metric, x.value), (y.step, &y.metric, y.value));
    }
    // and the run trained: the adapter moved away from a fresh one
    let st = TrainingState::read(&full).unwrap().unwrap();
    assert_eq!(st.optimizer_steps, 8);
    assert!(m1
        .iter()
        .any(|r| r.metric == "train/value_loss" && r.value.is_finite()));
}
