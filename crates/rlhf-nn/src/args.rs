//! The model flag group every model-running binary flattens (`--model`, `--device`,
//! `--dtype`), the LoRA flag group of the three trainers (`--lora-*`), and the parsing of
//! device and dtype names.

use std::path::PathBuf;

use clap::Args;
use tch::{Device, Kind};

use crate::config::Arch;
use crate::error::{NnError, Result};
use crate::lora::LoraConfig;

use rlhf_core::compute::DeviceName;
pub use rlhf_core::compute::Dtype;

/// The libtorch kind of a `--dtype` value.
pub trait DtypeKind {
    /// The libtorch kind.
    fn kind(self) -> Kind;
}

impl DtypeKind for Dtype {
    fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// Flags selecting a model folder and where/how to run it.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face model folder (config.json, model.safetensors or shards with
    /// model.safetensors.index.json, tokenizer.json).
    #[arg(long = "model", value_name = "DIR")]
    pub model: PathBuf,
    /// Compute device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,
    /// Weight and activation type.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

impl ModelArgs {
    /// The parsed device; an error names the bad value.
    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// The libtorch kind for `--dtype`.
    pub fn kind(&self) -> Kind {
        self.dtype.kind()
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` picks CUDA device 0 when available.
pub fn parse_device(s: &str) -> Result<Device> {
    match DeviceName::parse(s).map_err(NnError::Device)? {
        DeviceName::Auto => Ok(Device::cuda_if_available()),
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Cuda(i) => cuda(i),
    }
}

fn cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count();
    if (i as i64) < n {
        Ok(Device::Cuda(i))
    } else {
        let build = if cuda_linked() {
            "this build has CUDA support"
        } else {
            "this build has no CUDA support: rebuild with PERL_RLHF_CUDA=1 (see \
             crates/rlhf-nn/build.rs) to run on a GPU"
        };
        Err(NnError::Device(format!(
            "--device cuda:{i}: libtorch sees {n} CUDA device(s) ({build}); use --device cpu \
             or auto"
        )))
    }
}

/// True when libtorch's CUDA library is loaded in this process (a build with
/// PERL_RLHF_CUDA=1); without it libtorch sees no CUDA device even on a GPU machine.
pub fn cuda_linked() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("libtorch_cuda.so"))
}

/// Sets libtorch's intra-op thread count (call once at start-up with `--threads`).
pub fn init_threads(n: Option<usize>) {
    if let Some(n) = n {
        tch::set_num_threads(n.max(1) as i32);
    }
}

/// The LoRA flags of the trainers (train-sft, train-rm-lora, ppo-update): one set of names
/// and defaults, those of PEFT's `LoraConfig`.
#[derive(Debug, Clone, Default, PartialEq, Args)]
#[command(next_help_heading = "LoRA")]
pub struct LoraArgs {
    /// LoRA rank r [default: 8].
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<i64>,
    /// LoRA alpha: the adapter's output is scaled by alpha / r (alpha / sqrt(r) with
    /// --rslora) [default: 2 x rank].
    #[arg(long, value_name = "ALPHA")]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter's input, in training forwards only [default: 0].
    #[arg(long, value_name = "P")]
    pub lora_dropout: Option<f64>,
    /// Modules that get LoRA, comma-separated, matched on the last parts of their names as
    /// PEFT does; `all-linear` for every linear layer of the blocks; `lm_head` for the output
    /// layer of a model whose head is not tied to its input embedding (e.g.
    /// `all-linear,lm_head`); a name that selects no module is an error [default:
    /// q_proj,v_proj for Llama-family models, c_attn for GPT-2]. Also accepted as
    /// --target-modules.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        alias = "target-modules"
    )]
    pub lora_targets: Vec<String>,
    /// rsLoRA (Kalajdzievski 2023): scale by alpha / sqrt(r) instead of alpha / r.
    #[arg(long)]
    pub rslora: bool,
}

/// The LoRA settings the --lora-* flags resolve to, before a model is loaded (the target
/// modules are resolved against the model's family by [`LoraChoice::config`]). Trainers keep
/// it in their settings and their resume fingerprints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoraChoice {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Empty: the family's default.
    pub targets: Vec<String>,
    pub rslora: bool,
}

impl LoraChoice {
    /// The LoRA configuration of a fresh adapter on a model of `arch`.
    pub fn config(&self, arch: Arch) -> LoraConfig {
        let mut cfg = LoraConfig::default_for(arch);
        cfg.r = self.rank;
        cfg.alpha = self.alpha;
        cfg.dropout = self.dropout;
        cfg.use_rslora = self.rslora;
        if !self.targets.is_empty() {
            cfg.target_modules = self.targets.clone();
        }
        cfg
    }
}

impl LoraArgs {
    /// Rank when --lora-rank is not given.
    pub const DEFAULT_RANK: i64 = 8;

    /// Whether any LoRA flag was given.
    pub fn given(&self) -> bool {
        self.lora_rank.is_some()
            || self.lora_alpha.is_some()
            || self.lora_dropout.is_some()
            || !self.lora_targets.is_empty()
            || self.rslora
    }

    /// The rank: --lora-rank or 8.
    pub fn rank(&self) -> i64 {
        self.lora_rank.unwrap_or(Self::DEFAULT_RANK)
    }

    /// The alpha: --lora-alpha or 2 x rank.
    pub fn alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(2.0 * self.rank() as f64)
    }

    /// Checks the values; the error names the flag (a usage error, exit 2).
    pub fn validate(&self) -> std::result::Result<(), rlhf_core::CoreError> {
        let usage = |m: String| Err(rlhf_core::CoreError::Usage(m));
        if self.rank() < 1 {
            return usage(format!(
                "--lora-rank must be at least 1, got {}",
                self.rank()
            ));
        }
        let alpha = self.alpha();
        if !(alpha > 0.0 && alpha.is_finite()) {
            return usage(format!("--lora-alpha must be a number > 0, got {alpha}"));
        }
        let dropout = self.lora_dropout.unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return usage(format!("--lora-dropout must be in [0, 1), got {dropout}"));
        }
        if self.lora_targets.iter().any(|t| t.trim().is_empty()) {
            return usage("--lora-targets has an empty name".into());
        }
        Ok(())
    }

    /// The flags over the defaults, checked.
    pub fn resolve(&self) -> std::result::Result<LoraChoice, rlhf_core::CoreError> {
        self.validate()?;
        Ok(LoraChoice {
            rank: self.rank(),
            alpha: self.alpha(),
            dropout: self.lora_dropout.unwrap_or(0.0),
            targets: self
                .lora_targets
                .iter()
                .map(|t| t.trim().to_string())
                .collect(),
            rslora: self.rslora,
        })
    }

    /// The LoRA configuration of a fresh adapter on a model of `arch`: the flags over the
    /// defaults, checked.
    pub fn config(&self, arch: Arch) -> std::result::Result<LoraConfig, rlhf_core::CoreError> {
        Ok(self.resolve()?.config(arch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if tch::Cuda::device_count() == 0 {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("0 CUDA device"), "{err}");
            assert!(err.contains("no CUDA support") != cuda_linked(), "{err}");
        }
    }

    #[derive(clap::Parser)]
    struct Lora {
        #[command(flatten)]
        lora: LoraArgs,
    }

    fn lora(args: &[&str]) -> LoraArgs {
        use clap::Parser;
        Lora::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .lora
    }

    #[test]
    fn lora_defaults_are_peft_s() {
        let none = lora(&[]);
        assert!(!none.given());
        let cfg = none.config(Arch::Llama).unwrap();
        assert_eq!((cfg.r, cfg.alpha, cfg.dropout), (8, 16.0, 0.0));
        assert_eq!(cfg.target_modules, ["q_proj", "v_proj"]);
        assert_eq!(none.config(Arch::Gpt2).unwrap().target_modules, ["c_attn"]);
        // alpha follows the rank unless given
        let r4 = lora(&["--lora-rank", "4"]);
        assert!(r4.given());
        assert_eq!(r4.config(Arch::Llama).unwrap().alpha, 8.0);
        let rs = lora(&["--lora-rank", "4", "--lora-alpha", "4", "--rslora"]);
        assert_eq!(rs.config(Arch::Llama).unwrap().scale(), 2.0);
    }

    #[test]
    fn target_modules_is_an_alias_of_lora_targets() {
        let a = lora(&["--target-modules", "q_proj,o_proj"]);
        let b = lora(&["--lora-targets", "q_proj,o_proj"]);
        assert_eq!(a, b);
        assert_eq!(a.lora_targets, ["q_proj", "o_proj"]);
    }

    #[test]
    fn bad_lora_values_are_usage_errors_naming_the_flag() {
        for (args, flag) in [
            (&["--lora-rank", "0"][..], "--lora-rank"),
            (&["--lora-alpha=-1"][..], "--lora-alpha"),
            (&["--lora-dropout", "1"][..], "--lora-dropout"),
            (&["--lora-targets", "q_proj,"][..], "--lora-targets"),
        ] {
            let err = lora(args).config(Arch::Llama).unwrap_err();
            assert!(matches!(err, rlhf_core::CoreError::Usage(_)), "{err}");
            assert!(err.to_string().contains(flag), "{err}");
        }
    }
}
