//! The `--device` and `--dtype` values, parsed here rather than beside libtorch so that a
//! stage can read its command line without loading libtorch (score-rewards with rule rewards
//! only); `rlhf_nn` maps them to libtorch's devices and kinds (`rlhf_nn::parse_device`, which
//! also checks that the device exists, and `rlhf_nn::DtypeKind`).

use clap::ValueEnum;

/// Floating-point type of the model weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// 32-bit float (the default; on CPUs without AMX bf16 is several times slower).
    F32,
    /// bfloat16 (halves memory; LoRA weights and heads stay f32).
    Bf16,
}

/// A `--device` value: auto (CUDA if available, else CPU), cpu, cuda (or gpu) or cuda:N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    Auto,
    Cpu,
    /// CUDA device N (`cuda` and `gpu` are 0).
    Cuda(usize),
}

impl DeviceName {
    /// Parses a `--device` value (case and surrounding spaces ignored); the error is the
    /// message for the user.
    pub fn parse(s: &str) -> Result<DeviceName, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceName::Auto),
            "cpu" => Ok(DeviceName::Cpu),
            "cuda" | "gpu" => Ok(DeviceName::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map(DeviceName::Cuda).map_err(|_| {
                    format!("--device `{s}`: expected auto, cpu, cuda or cuda:N with N a number")
                }),
                None => Err(format!(
                    "--device `{s}`: expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(DeviceName::parse(" CPU "), Ok(DeviceName::Cpu));
        assert_eq!(DeviceName::parse("auto"), Ok(DeviceName::Auto));
        assert_eq!(DeviceName::parse("gpu"), Ok(DeviceName::Cuda(0)));
        assert_eq!(DeviceName::parse("cuda:3"), Ok(DeviceName::Cuda(3)));
        let e = DeviceName::parse("cuda:x").unwrap_err();
        assert!(e.contains("with N a number"), "{e}");
        let e = DeviceName::parse("tpu").unwrap_err();
        assert!(
            e.contains("`tpu`: expected auto, cpu, cuda or cuda:N"),
            "{e}"
        );
    }
}
