//! Command-line behaviour of the ppo-update binary on bad input: exit codes and messages.

mod common;

use std::process::Command;

use common::{s, World};
use rlhf_core::lineage::Lineage;
use rlhf_core::records::ScoresTable;
use rlhf_core::schema::Artifact;

fn ppo_update(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ppo-update"))
        .args(["--no-progress", "--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn rollouts_without_scores_exit_3_naming_ids() {
    let w = World::new();
    let (r, sc) = w.rollouts("it1", None, 3, 2, false);
    let (mut table, _) = ScoresTable::read(&sc).unwrap();
    table.rollout_id.remove(0);
    table.reward.remove(0);
    table.penalty.remove(0);
    for (_, v) in table.sources.iter_mut() {
        v.remove(0);
    }
    table.rollout_id.push("stranger".into());
    table.reward.push(1.0);
    table.penalty.push(0.0);
    for (_, v) in table.sources.iter_mut() {
        v.push(None);
    }
    let bad = w.path("bad-scores.parquet");
    table
        .write(&bad, &Lineage::new("test", "0", Artifact::Scores))
        .unwrap();
    let out = w.path("out");
    let (code, err) = ppo_update(&[
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r),
        "--scores",
        s(&bad),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("6 rollouts, 1 without a score (e.g. r0-0)"),
        "{err}"
    );
    assert!(
        err.contains("6 scores, 1 for unknown rollouts (e.g. stranger)"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn usage_errors_exit_2_and_bad_model_exits_3() {
    let w = World::new();
    let (r, sc) = w.rollouts("it1", None, 1, 2, false);
    let out = w.path("out");
    let (code, err) = ppo_update(&[
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r),
        "--scores",
        s(&sc),
        "--out",
        s(&out),
        "--algo",
        "dpo",
    ]);
    assert_eq!(code, 2, "{err}");
    // a floor on beta needs the adaptive controller (0, what run_config.toml records
    // for a fixed beta, is accepted), and so does reading the updated policy's KL; a KL
    // limit is a positive number of nats
    for (flag, value, named) in [
        ("--kl-coef-min", "0.1", "--kl-coef-min"),
        ("--kl-control-on", "updated", "--kl-target"),
        ("--kl-max", "0", "--kl-max"),
        ("--kl-max", "nan", "--kl-max"),
    ] {
        let (code, err) = ppo_update(&[
            "--model",
            s(&w.model),
            "--rollouts",
            s(&r),
            "--scores",
            s(&sc),
            "--out",
            s(&out),
            flag,
            value,
        ]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(named), "{flag}: {err}");
    }
    let (code, err) = ppo_update(&[
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r),
        "--scores",
        s(&sc),
        "--out",
        s(&out),
        "--minibatch-size",
        "3",
        "--micro-batch-size",
        "2",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("multiple of --micro-batch-size"), "{err}");
    let (code, err) = ppo_update(&[
        "--model",
        s(&w.path("nowhere")),
        "--rollouts",
        s(&r),
        "--scores",
        s(&sc),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no config.json"), "{err}");
    // RLOO needs several samples per prompt: one prompt x 2 samples is fine, 1 sample is not
    let (r1, sc1) = w.rollouts("single", None, 2, 1, false);
    let (code, err) = ppo_update(&[
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r1),
        "--scores",
        s(&sc1),
        "--out",
        s(&out),
        "--algo",
        "rloo",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("at least 2 samples per prompt"), "{err}");
}

#[test]
fn full_flag_combinations_are_usage_errors() {
    let w = World::new();
    let (r, sc) = w.rollouts("it1", None, 2, 2, false);
    let adapter = w.drifted_adapter("drifted", 0.05);
    let out = w.path("out");
    let base = [
        "--model",
        s(&w.model),
        "--rollouts",
        s(&r),
        "--scores",
        s(&sc),
        "--out",
        s(&out),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        ppo_update(&a)
    };
    // a full policy has no adapter
    let (code, err) = with(&[
        "--full",
        "--ref-model",
        s(&w.model),
        "--adapter",
        s(&adapter),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--adapter") && err.contains("--full") && err.contains("cannot be used with"),
        "{err}"
    );
    // --full needs a reference copy; --ref-model means nothing without --full
    let (code, err) = with(&["--full"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ref-model"), "{err}");
    let (code, err) = with(&["--ref-model", s(&w.model)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--full"), "{err}");
    // --lora-* shape only the critic with --full: an error where there is none
    let (code, err) = with(&[
        "--full",
        "--ref-model",
        s(&w.model),
        "--algo",
        "rloo",
        "--lora-rank",
        "4",
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("drop the --lora-* flags"), "{err}");
    // the reference must be a model folder
    let (code, err) = with(&["--full", "--ref-model", s(&adapter)]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--ref-model: not a model folder"), "{err}");
    assert!(!out.exists());
}
