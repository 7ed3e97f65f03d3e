//! The model flag group every model-running binary flattens (`--model`, `--device`,
//! `--dtype`), and the parsing of device and dtype names.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tch::{Device, Kind};

use crate::error::{NnError, Result};

/// Floating-point type of the model weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// 32-bit float (the default; on CPUs without AMX bf16 is several times slower).
    F32,
    /// bfloat16 (halves memory; LoRA weights and heads stay f32).
    Bf16,
}

impl Dtype {
    /// The libtorch kind.
    pub fn kind(self) -> Kind {
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
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:") {
            Some(n) => match n.parse::<usize>() {
                Ok(i) => cuda(i),
                Err(_) => Err(NnError::Argument(format!(
                    "--device `{s}`: expected auto, cpu, cuda or cuda:N with N a number"
                ))),
            },
            None => Err(NnError::Argument(format!(
                "--device `{s}`: expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

fn cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count();
    if (i as i64) < n {
        Ok(Device::Cuda(i))
    } else {
        Err(NnError::Argument(format!(
            "--device cuda:{i}: this machine has {n} CUDA device(s); use --device cpu or auto"
        )))
    }
}

/// Sets libtorch's intra-op thread count (call once at start-up with `--threads`).
pub fn init_threads(n: Option<usize>) {
    if let Some(n) = n {
        tch::set_num_threads(n.max(1) as i32);
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
        }
    }
}
