//! Smoke tests of the rlhf-bench binary: the results file's shape (never its timings).

use std::process::Command;

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf-bench"));
    c.env_remove("RLHF_PYTHON").arg("-q");
    c
}

/// `rlhf-bench --quick --threads 1 --cases CASES` without the Python references: the
/// results file's cases, after checking that the run succeeded.
fn quick_cases(cases: &str) -> Vec<serde_json::Value> {
    quick_cases_with(cases, &[])
}

/// [`quick_cases`] with more flags.
fn quick_cases_with(cases: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.json");
    let o = bench()
        .args(["--quick", "--threads", "1", "--cases", cases, "--out"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn quick_run_writes_results_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench/results.json");
    let mut c = bench();
    c.args([
        "--quick",
        "--threads",
        "1",
        "--cases",
        "matmul_fp32",
        "--out",
    ])
    .arg(&out);
    // With the project's Python environment the reference is measured too.
    let python = std::env::var_os("RLHF_PYTHON");
    if let Some(p) = &python {
        c.env("RLHF_PYTHON", p);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.lines().nth(2).unwrap().starts_with("matmul_fp32 "),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["machine"]["torch_threads"], 1);
    assert!(v["machine"]["torch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.11.0"));
    let case = &v["cases"][0];
    assert_eq!(case["name"], "matmul_fp32");
    assert_eq!(case["unit"], "GFLOP/s");
    assert!(case["value"].as_f64().unwrap() > 0.0);
    if python.is_some() {
        let (ours, reference) = (
            case["value"].as_f64().unwrap(),
            case["reference_value"].as_f64().unwrap(),
        );
        assert!(reference > 0.0);
        assert!((case["ratio"].as_f64().unwrap() - ours / reference).abs() < 1e-9);
    } else {
        assert!(case["reference"].is_null() && case["ratio"].is_null());
    }
}

#[test]
fn unknown_case_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bench()
        .args(["--cases", "matmul_fp32,warp_drive", "--out"])
        .arg(tmp.path().join("r.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown benchmark case `warp_drive`"), "{err}");
    assert!(!tmp.path().join("r.json").exists());
}

/// The LoRA-vs-full policy case end to end on the small preset: it runs the stage binaries
/// (built beside this test by `cargo test --workspace`) and reports every figure against
/// the full run. Only shapes and the trainable-parameter counts are checked, never timings.
#[test]
fn quick_ppo_lora_vs_full_reports_each_figure_against_full_tuning() {
    let cases = quick_cases("ppo_lora_vs_full");
    let get = |what: &str| {
        let name = format!("ppo_lora_vs_full.small.rloo.{what}");
        cases
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no {name} in {cases:?}"))
    };
    for what in [
        "lora_seconds_per_step",
        "lora_peak_rss",
        "lora_trainable_params",
    ] {
        let c = get(what);
        assert!(c["value"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["reference_value"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["ratio"].as_f64().unwrap() > 0.0, "{c}");
    }
    // LoRA trains a small fraction of the weights: the ratio (full / LoRA) is large
    assert!(get("lora_trainable_params")["ratio"].as_f64().unwrap() > 5.0);
    let fraction = get("lora_memory_fraction")["value"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction.is_finite());
}

/// The RL-loop case end to end on the small preset, without the TRL reference: the three
/// stage binaries run for two iterations (the second continues the first's adapter) and the
/// case reports completion tokens per second, seconds per iteration and peak memory.
#[test]
fn quick_rl_loop_runs_the_three_binaries_for_each_iteration() {
    let cases = quick_cases("rl_loop");
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rl_loop", "rl_loop_iteration", "rl_loop_peak_rss"]);
    for c in cases {
        assert!(c["value"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["reference"].is_null(), "no Python, no reference: {c}");
    }
}

/// `--rounds 0` is a usage error (exit 2), before any case runs.
#[test]
fn zero_rounds_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bench()
        .args(["--cases", "policy_step", "--rounds", "0", "--out"])
        .arg(tmp.path().join("r.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!tmp.path().join("r.json").exists());
}

/// The training-step cases end to end on the small preset, without the Python references,
/// in two rounds (each round's runs in folders of their own): each reports our seconds per
/// step with and without shared prompts.
#[test]
fn quick_training_step_cases_report_ours_with_and_without_shared_prompts() {
    let cases = quick_cases_with("rm_step,policy_step", &["--rounds", "2"]);
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "rm_step.small.seconds_per_step",
            "rm_step.small.seconds_per_step_unshared_prompts",
            "policy_step.small.seconds_per_step",
            "policy_step.small.seconds_per_step_unshared_prompts",
        ]
    );
    for c in cases {
        assert!(c["value"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["reference"].is_null(), "no Python, no reference: {c}");
    }
}

/// `--quick --cases scale`: the SmolLM2 config cut to 2 layers, written by transformers,
/// goes through every stage (LoRA and --full) and each reports seconds and peak RSS. Needs
/// RLHF_PYTHON (the model folder is transformers'); without it the case must fail saying so.
#[test]
fn quick_scale_runs_every_stage_on_a_transformers_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.json");
    let mut c = bench();
    c.args(["--quick", "--threads", "1", "--cases", "scale", "--out"])
        .arg(&out);
    let Some(python) = std::env::var_os("RLHF_PYTHON") else {
        let o = c.output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("needs RLHF_PYTHON"), "{err}");
        panic!("RLHF_PYTHON is not set: the scale case cannot run (make test sets it)");
    };
    let o = c.env("RLHF_PYTHON", python).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let value = |name: &str| {
        cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name}: {cases:?}"))["value"]
            .as_f64()
            .unwrap()
    };
    let size = "scale.smollm2-135m-2layers";
    // 2 layers of SmolLM2's width with its 49,152-token tied embedding
    assert_eq!(value(&format!("{size}.parameters")), 35_392_320.0);
    for stage in [
        "sample", "rm_lora", "rm_full", "score", "ppo_lora", "ppo_full",
    ] {
        assert!(value(&format!("{size}.{stage}.seconds")) > 0.0, "{stage}");
        assert!(value(&format!("{size}.{stage}.peak_rss")) > 0.05, "{stage}");
    }
    for stage in ["rm_lora", "rm_full", "ppo_lora", "ppo_full"] {
        assert!(
            value(&format!("{size}.{stage}.seconds_per_step")) > 0.0,
            "{stage}"
        );
    }
    // full tuning holds AdamW's moments (and for ppo a reference copy): more memory
    assert!(
        value(&format!("{size}.rm_full.peak_rss")) > value(&format!("{size}.rm_lora.peak_rss"))
    );
    assert!(
        value(&format!("{size}.ppo_full.peak_rss")) > value(&format!("{size}.ppo_lora.peak_rss"))
    );
}
