//! score-rewards scores rule rewards without libtorch and hands reward models to
//! score-rewards-rm: its binary names no libtorch library; alone in a folder (no libtorch
//! beside it) it scores rules, refuses a bad device name with exit 2, and with a
//! `--reward-model` fails with exit 1 naming the missing score-rewards-rm; beside the real
//! binaries, the hand-over keeps score-rewards-rm's usage exit code.

mod common;

use std::path::Path;

use rlhf_core::records::ScoresTable;

use common::{rollouts, run_at, write_rollouts};

#[test]
fn rules_score_without_libtorch_and_reward_models_go_to_score_rewards_rm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rollouts(&root.join("rollouts.parquet"), &rollouts(3, 2), None);
    let alone = root.join("alone");
    std::fs::create_dir(&alone).unwrap();
    let bin = alone.join("score-rewards");
    std::fs::copy(env!("CARGO_BIN_EXE_score-rewards"), &bin).unwrap();
    let rollouts = root.join("rollouts.parquet");
    let r = rollouts.to_str().unwrap();

    let out = root.join("scores.parquet");
    let (code, _, err) = run_at(
        &bin,
        &[
            "--rollouts",
            r,
            "--rule",
            "length:target=3",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (table, _) = ScoresTable::read(&out).unwrap();
    assert_eq!(table.rollout_id.len(), 6);

    let (code, _, err) = run_at(
        &bin,
        &[
            "--rollouts",
            r,
            "--rule",
            "length:target=3",
            "--device",
            "tpu",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--device `tpu`: expected auto, cpu, cuda or cuda:N"),
        "{err}"
    );

    let rm = root.join("rm");
    std::fs::create_dir(&rm).unwrap();
    let other = root.join("other.parquet");
    let (code, _, err) = run_at(
        &bin,
        &[
            "--rollouts",
            r,
            "--reward-model",
            rm.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("score-rewards-rm"), "{err}");
    assert!(!other.exists());

    // Beside the real binaries: score-rewards-rm runs and its usage error (a CUDA device
    // libtorch does not see, which only it checks) comes back as exit 2.
    let real = Path::new(env!("CARGO_BIN_EXE_score-rewards"));
    let (code, _, err) = run_at(
        real,
        &[
            "--rollouts",
            r,
            "--reward-model",
            rm.to_str().unwrap(),
            "--device",
            "cuda:99",
            "--out",
            other.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("libtorch sees"), "{err}");
}

/// The dynamic section names the libraries a binary loads: score-rewards names no libtorch
/// library, score-rewards-rm does (so the search can find them). Independent of
/// LD_LIBRARY_PATH and the loader's cache, which could let a copied binary start anyway.
#[test]
fn only_score_rewards_rm_names_libtorch() {
    let names = |bin: &str| -> Vec<&'static str> {
        let bytes = std::fs::read(bin).unwrap();
        ["libtorch_cpu.so", "libtorch_cuda.so", "libc10.so"]
            .into_iter()
            .filter(|lib| bytes.windows(lib.len()).any(|w| w == lib.as_bytes()))
            .collect()
    };
    assert_eq!(
        names(env!("CARGO_BIN_EXE_score-rewards")),
        Vec::<&str>::new()
    );
    assert!(names(env!("CARGO_BIN_EXE_score-rewards-rm")).contains(&"libtorch_cpu.so"));
}

/// After the hand-over the process is named score-rewards again, not `score-rewards-r` (exec's
/// 15-byte cut of score-rewards-rm), so `killall score-rewards` reaches a reward-model run.
/// The run is held where score-rewards-rm reads its `--config` file, a FIFO that the test
/// fed once for score-rewards (which reads it first) and then leaves without a writer.
#[test]
fn the_hand_over_keeps_the_stage_name() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flags.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&config)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let rm = dir.path().join("rm");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_score-rewards"))
        .arg("--config")
        .arg(&config)
        .args(["--rollouts", "r.parquet", "--reward-model"])
        .arg(&rm)
        .arg("--out")
        .arg(dir.path().join("scores.parquet"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // score-rewards reads the flags file to its end (opening blocks until it does)
    let mut feed = std::fs::OpenOptions::new()
        .write(true)
        .open(&config)
        .unwrap();
    feed.write_all(b"# no flags\n").unwrap();
    drop(feed);
    let proc_dir = format!("/proc/{}", child.id());
    let read = |what: &str| {
        let path = format!("{proc_dir}/{what}");
        match what {
            "exe" => std::fs::read_link(&path)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            _ => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    };
    let want = ("score-rewards-rm".to_string(), "score-rewards".to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = (String::new(), String::new());
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        seen = (read("exe"), read("comm"));
        if seen == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, want, "(executable, process name) after the hand-over");
}
