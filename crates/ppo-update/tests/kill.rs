//! Kill and resume: the ppo-update binary killed by SIGKILL after a checkpoint, then rerun
//! with --resume. In its own test binary (the fixture draws from libtorch's process-wide
//! generator).

mod common;

use std::path::Path;

use common::{s, World};

/// The binary killed by SIGKILL after a checkpoint, then the same command with --resume:
/// the rerun resumes from that checkpoint and writes the uninterrupted run's bytes.
#[test]
fn a_killed_run_resumes_from_its_checkpoint_to_the_same_adapter() {
    let w = World::new();
    let (r, sc) = w.rollouts("kill", None, 8, 4, false);
    let command = |out: &Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ppo-update"));
        c.args([
            "--model",
            s(&w.model),
            "--rollouts",
            s(&r),
            "--scores",
            s(&sc),
        ])
        .args(["--out", s(out), "--algo", "grpo", "--learning-rate", "1e-2"])
        .args([
            "--epochs",
            "30",
            "--minibatch-size",
            "4",
            "--micro-batch-size",
            "2",
        ])
        .args(["--checkpoint-every", "1", "--seed", "4"])
        .args(["--no-progress", "--threads", "1", "--device", "cpu"]);
        c
    };
    let whole = w.path("whole");
    rlhf_testkit::assert_success(&command(&whole).output().unwrap());
    let killed = w.path("killed");
    let mut first = command(&killed);
    first.arg("-q");
    let at = rlhf_testkit::kill_after_checkpoint(&mut first, &w.path("killed.checkpoint"));
    assert!(
        !killed.exists(),
        "a killed run must not leave an output folder"
    );
    let rerun = command(&killed).arg("--resume").output().unwrap();
    rlhf_testkit::assert_success(&rerun);
    rlhf_testkit::assert_resumed_from(&rerun.stderr, at);
    for file in [
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "training_state.json",
    ] {
        let x = std::fs::read(whole.join(file)).unwrap();
        let y = std::fs::read(killed.join(file)).unwrap();
        assert!(
            x == y,
            "{file} differs between the uninterrupted and the resumed run"
        );
    }
}
