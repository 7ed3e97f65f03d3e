//! Every model stage refuses a CUDA device that this machine (or this build) does not have
//! with a usage error (exit 2) saying so, before it reads any input or writes anything.
//! The device asked for is one past the last one libtorch sees, so the test runs the same
//! on a CPU machine and on a GPU machine. The other stages' binaries are found beside this
//! one's (target/<profile>/); `make test` builds them all first.

use std::path::PathBuf;
use std::process::Command;

fn stage_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<stage>
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build every binary first (make build)",
        bin.display()
    );
    bin
}

#[test]
fn a_cuda_device_that_is_not_there_is_a_usage_error_in_every_model_stage() {
    let n = tch::Cuda::device_count();
    let device = format!("cuda:{n}");
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let m = missing.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let p = format!("{m}/x.parquet");
    let cases: [(&str, Vec<&str>); 6] = [
        (
            "sample-rollouts",
            vec!["--model", m, "--prompts", &p, "--out", o],
        ),
        (
            "score-rewards",
            vec![
                "--model",
                m,
                "--rollouts",
                &p,
                "--reward-model",
                m,
                "--out",
                o,
            ],
        ),
        (
            "train-rm-lora",
            vec!["--model", m, "--preferences", &p, "--out", o],
        ),
        ("train-sft", vec!["--model", m, "--data", &p, "--out", o]),
        (
            "ppo-update",
            vec!["--model", m, "--rollouts", &p, "--scores", &p, "--out", o],
        ),
        (
            "merge-adapter",
            vec!["--model", m, "--adapter", m, "--out", o],
        ),
    ];
    for (stage, args) in cases {
        let run = Command::new(stage_binary(stage))
            .args(&args)
            .args(["--device", &device, "--no-progress"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stage}: {err}");
        assert!(
            err.contains(&format!("--device {device}")) && err.contains("CUDA device"),
            "{stage}: {err}"
        );
        assert!(!out.exists(), "{stage} wrote {}", out.display());
    }
    // a malformed device is a usage error too
    let run = Command::new(stage_binary("sample-rollouts"))
        .args(["--model", m, "--prompts", &p, "--out", o, "--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
}
