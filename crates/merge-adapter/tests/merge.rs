//! merge-adapter end to end: merged equals unmerged; the folder transformers loads gives our
//! logits and scores; peft's merge_and_unload gives our weights; lineage refusal and --force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use merge_adapter::output::OutputKind;
use merge_adapter::verify;
use rlhf_nn::{HeadKind, LoraConfig, Model, ModelConfig};
use rlhf_testkit::{python, randomize_adapter, Redraw};
use tch::{Device, Kind, Tensor};

/// A random base folder (pad id 0, so token ids >= 1 never count as padding).
fn base(dir: &Path, preset: &str) -> PathBuf {
    let mut cfg = ModelConfig::preset(preset).unwrap();
    cfg.vocab_size = 96;
    cfg.pad_token_id = Some(0);
    cfg.max_position_embeddings = 64;
    let path = dir.join(format!("base-{preset}"));
    let m = Model::random(&cfg, Device::Cpu, Kind::Float, 11).unwrap();
    m.save_pretrained(&path).unwrap();
    path
}

/// An adapter on `base` with non-zero B (alpha != r), and `state_file` recording `base_id`
/// (the real one when None).
fn adapter(base: &Path, name: &str, head: Option<HeadKind>, base_id: Option<&str>) -> PathBuf {
    let mut m = Model::load(base, Device::Cpu, Kind::Float).unwrap();
    let mut cfg = LoraConfig::default_for(m.config().arch);
    cfg.alpha = 2.0 * cfg.r as f64;
    m.add_adapter(name, &cfg, head, 5).unwrap();
    randomize_adapter(&m, name, Redraw::LoraB, 0.2, 3);
    let dir = base.parent().unwrap().join(name);
    m.save_adapter(name, &dir).unwrap();
    let state = if head.is_some() {
        "rlhf_state.json"
    } else {
        "training_state.json"
    };
    let id = base_id.map_or_else(|| m.base_id(), String::from);
    std::fs::write(dir.join(state), format!("{{\"base_id\": \"{id}\"}}")).unwrap();
    dir
}

fn ids() -> Vec<Vec<i64>> {
    vec![
        vec![5, 17, 42, 8, 90, 3, 3, 61],
        vec![1, 2, 77, 30, 12, 55, 44, 9],
    ]
}

fn ids_tensor() -> (Tensor, Tensor) {
    let flat: Vec<i64> = ids().concat();
    let t = Tensor::from_slice(&flat).view([2, 8]);
    let mask = t.ones_like();
    (t, mask)
}

/// Our outputs with the adapter attached (not merged).
fn unmerged(base: &Path, adapter: &Path, kind: OutputKind) -> Tensor {
    let mut m = Model::load(base, Device::Cpu, Kind::Float).unwrap();
    m.load_adapter("a", adapter).unwrap();
    verify::outputs(&m, Some("a"), kind, &ids_tensor()).unwrap()
}

fn merged_outputs(dir: &Path, kind: OutputKind) -> Tensor {
    let m = Model::load(dir, Device::Cpu, Kind::Float).unwrap();
    verify::outputs(&m, None, kind, &ids_tensor()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn merge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_merge-adapter"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

use rlhf_testkit::assert_success as ok;

#[test]
fn policy_merge_equals_unmerged_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let b = base(tmp.path(), "llama-tiny");
    let a = adapter(&b, "policy", None, None);
    let out = tmp.path().join("merged");
    let o = merge(&[
        "--model",
        s(&b),
        "--adapter",
        s(&a),
        "--out",
        s(&out),
        "--summary-json",
        "-",
        "--verify",
        "--max-shard-size",
        "40KB",
        "--device",
        "cpu",
    ]);
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["stage"], "merge-adapter");
    let details = &summary["details"];
    assert_eq!(details["architecture"], "LlamaForCausalLM");
    assert!(details["verification"]["max_abs_diff"].as_f64().unwrap() < 1e-4);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    assert!(index["weight_map"].get("lm_head.weight").is_some());
    let (before, after) = (
        unmerged(&b, &a, OutputKind::CausalLm),
        merged_outputs(&out, OutputKind::CausalLm),
    );
    let base_only = merged_outputs(&b, OutputKind::CausalLm);
    assert!(
        max_diff(&before, &base_only) > 1e-3,
        "the adapter must change the logits"
    );
    assert!(max_diff(&before, &after) < 1e-4);
    // Nothing else left beside the output.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn reward_merge_writes_sequence_classification_in_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let b = base(tmp.path(), "llama-tiny");
    let a = adapter(&b, "reward", Some(HeadKind::Score), None);
    let out = tmp.path().join("rm-merged");
    ok(&merge(&[
        "--model",
        s(&b),
        "--adapter",
        s(&a),
        "--out",
        s(&out),
        "--verify",
        "--dtype",
        "bf16",
        "--device",
        "cpu",
    ]));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(cfg["num_labels"], 1);
    assert_eq!(cfg["dtype"], "bfloat16");
    let tensors = Tensor::read_safetensors(out.join("model.safetensors")).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"score.weight") && !names.contains(&"lm_head.weight"),
        "{names:?}"
    );
    assert!(tensors.iter().all(|(_, t)| t.kind() == Kind::BFloat16));
    let d = max_diff(
        &unmerged(&b, &a, OutputKind::SequenceClassification),
        &merged_outputs(&out, OutputKind::SequenceClassification),
    );
    assert!(d < 0.05, "bf16 rounding only: {d}");
}

#[test]
fn adapter_of_another_base_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let b = base(tmp.path(), "llama-tiny");
    let a = adapter(&b, "policy", None, Some("0123456789abcdef"));
    let out = tmp.path().join("merged");
    let o = merge(&[
        "--model",
        s(&b),
        "--adapter",
        s(&a),
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("base_id 0123456789abcdef")
            && err.contains("training_state.json")
            && err.contains("--force"),
        "{err}"
    );
    assert!(!out.exists());
    let o = merge(&[
        "--model",
        s(&b),
        "--adapter",
        s(&a),
        "--out",
        s(&out),
        "--device",
        "cpu",
        "--force",
    ]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("merging anyway"));
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn missing_adapter_folder_is_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let b = base(tmp.path(), "llama-tiny");
    let o = merge(&[
        "--model",
        s(&b),
        "--adapter",
        s(&tmp.path().join("nope")),
        "--out",
        s(&tmp.path().join("o")),
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("adapter_config.json is missing"));
}

fn reference(py: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_reference.py");
    let o = Command::new(py).arg(script).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn read_dir_tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            out.extend(Tensor::read_safetensors(&p).unwrap());
        }
    }
    out
}

#[test]
fn transformers_loads_the_merged_folder_and_peft_merges_the_same_weights() {
    let py = python();
    let tmp = tempfile::tempdir().unwrap();
    for (preset, head, kind, tag) in [
        ("llama-tiny", None, OutputKind::CausalLm, "causal"),
        (
            "llama-tiny",
            Some(HeadKind::Score),
            OutputKind::SequenceClassification,
            "seqcls",
        ),
        ("gpt2-tiny", None, OutputKind::CausalLm, "causal"),
    ] {
        let case = tmp.path().join(format!("{preset}-{tag}"));
        std::fs::create_dir_all(&case).unwrap();
        let b = base(&case, preset);
        let a = adapter(&b, "adapter", head, None);
        let out = case.join("merged");
        ok(&merge(&[
            "--model",
            s(&b),
            "--adapter",
            s(&a),
            "--out",
            s(&out),
            "--device",
            "cpu",
            "--max-shard-size",
            "100KB",
        ]));

        // transformers, loading the folder as-is, gives our unmerged outputs.
        let hf_out = case.join("hf.safetensors");
        let ids_json = serde_json::to_string(&ids()).unwrap();
        reference(
            &py,
            &[
                "load",
                "--merged",
                s(&out),
                "--kind",
                tag,
                "--ids",
                &ids_json,
                "--out",
                s(&hf_out),
            ],
        );
        let hf = Tensor::read_safetensors(&hf_out).unwrap().remove(0).1;
        let ours = unmerged(&b, &a, kind);
        let ours = match kind {
            OutputKind::CausalLm => ours,
            OutputKind::SequenceClassification => ours.select(1, -1),
        };
        let d = max_diff(&hf, &ours);
        assert!(
            d < 1e-4,
            "{preset} {tag}: transformers vs ours differ by {d}"
        );

        // peft's merge_and_unload gives the same weights.
        let peft_out = case.join("peft.safetensors");
        reference(
            &py,
            &[
                "peft",
                "--base",
                s(&b),
                "--adapter",
                s(&a),
                "--kind",
                tag,
                "--out",
                s(&peft_out),
            ],
        );
        let theirs: BTreeMap<String, Tensor> = Tensor::read_safetensors(&peft_out)
            .unwrap()
            .into_iter()
            .collect();
        let mine = read_dir_tensors(&out);
        assert_eq!(
            theirs.keys().collect::<Vec<_>>(),
            mine.keys().collect::<Vec<_>>(),
            "{preset} {tag}: tensor names"
        );
        for (name, t) in &theirs {
            let d = max_diff(t, &mine[name]);
            assert!(d < 1e-5, "{preset} {tag}: {name} differs from peft by {d}");
        }
    }
}
