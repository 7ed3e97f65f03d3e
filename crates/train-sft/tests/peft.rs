//! LoRA SFT output is a PEFT adapter folder: peft loads it onto the transformers base and
//! gives the logits our model gives with the adapter attached (and not the base's).

mod common;

use common::{ok, Fixture};
use rlhf_testkit::python_last_line;
use tch::{Device, Kind, Tensor};

fn logits(model: &rlhf_nn::Model, adapter: Option<&str>, ids: &[i32]) -> Vec<f32> {
    let input = Tensor::from_slice(ids).to_kind(Kind::Int64).view([1, -1]);
    let _g = tch::no_grad_guard();
    let hidden = model
        .forward(&input, &input.ones_like(), adapter, false)
        .unwrap();
    Vec::<f32>::try_from(&model.lm_logits(&hidden, adapter, false).unwrap().view([-1])).unwrap()
}

fn check(arch: &str) {
    let fx = Fixture::with_rows(&common::rows(200), arch);
    let out = fx.path("adapter");
    ok(&fx.sft(
        "adapter",
        &[
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--max-steps",
            "15",
            "--learning-rate",
            "1e-2",
            "--batch-size",
            "8",
        ],
    ));
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.parquet",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let mut model = rlhf_nn::Model::load(&fx.model, Device::Cpu, Kind::Float).unwrap();
    model.load_adapter("sft", &out).unwrap();
    let ids: Vec<i32> = vec![0, 40, 70, 101, 150, 200, 33, 250, 5];
    let ours = logits(&model, Some("sft"), &ids);
    let base = logits(&model, None, &ids);
    let moved = ours
        .iter()
        .zip(&base)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the trained adapter does not change the output ({moved})"
    );

    let expected = fx.path("expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({"ids": ids, "logits": ours}).to_string(),
    )
    .unwrap();
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base_dir, adapter_dir, exp = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter_dir).eval()
with torch.no_grad():
    got = model(torch.tensor([exp["ids"]])).logits.reshape(-1)
print(json.dumps({"max_diff": (got - torch.tensor(exp["logits"])).abs().max().item()}))
"#;
    let line = python_last_line([
        "-c",
        script,
        fx.model.to_str().unwrap(),
        out.to_str().unwrap(),
        expected.to_str().unwrap(),
    ]);
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    let diff = got["max_diff"].as_f64().unwrap();
    assert!(diff < 1e-4, "peft logits differ from ours by {diff}");
}

#[test]
fn llama_lora_adapter_loads_in_peft_with_equal_logits() {
    check("llama");
}

#[test]
fn gpt2_lora_adapter_loads_in_peft_with_equal_logits() {
    check("gpt2");
}
