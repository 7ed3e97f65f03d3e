//! What the benchmarks ran on: CPU model, physical cores, hardware threads, memory, the
//! libtorch version and thread count, CUDA. Read from /proc on Linux (fields are null
//! elsewhere); the torch version comes from the `version.py` beside the loaded libtorch.
//! No host name: results files can be shared.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Machine description in results.json.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: Option<String>,
    /// Physical cores (distinct physical id / core id pairs).
    pub cores: Option<usize>,
    /// Hardware threads available to this process.
    pub threads: usize,
    /// libtorch intra-op threads the cases used.
    pub torch_threads: usize,
    pub memory_bytes: Option<u64>,
    pub os: String,
    pub arch: String,
    pub torch_version: Option<String>,
    pub libtorch_dir: Option<String>,
    pub cuda_devices: usize,
    pub quick: bool,
}

impl Machine {
    /// Describes this machine; `torch_threads` is what the cases were given.
    pub fn detect(torch_threads: usize, quick: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let libtorch = libtorch_dir(&maps);
        Machine {
            cpu_model: cpu_model(&cpuinfo),
            cores: physical_cores(&cpuinfo),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            torch_threads,
            memory_bytes: mem_total(&meminfo),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            torch_version: libtorch.as_deref().and_then(torch_version),
            libtorch_dir: libtorch.map(|p| p.display().to_string()),
            cuda_devices: tch::Cuda::device_count().max(0) as usize,
            quick,
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (k, v) = line.split_once(':')?;
    (k.trim() == key).then(|| v.trim())
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| field(l, "model name"))
        .map(str::to_string)
}

/// Distinct (physical id, core id) pairs of /proc/cpuinfo.
pub fn physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut cores = BTreeSet::new();
    let mut physical = None;
    for line in cpuinfo.lines() {
        if let Some(v) = field(line, "physical id") {
            physical = Some(v.to_string());
        } else if let Some(v) = field(line, "core id") {
            cores.insert((physical.clone(), v.to_string()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// MemTotal of /proc/meminfo, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let v = meminfo.lines().find_map(|l| field(l, "MemTotal"))?;
    let kib: u64 = v.trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The folder of the libtorch_cpu library mapped into this process.
pub fn libtorch_dir(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libtorch_cpu"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// `__version__` from `<torch>/version.py`, the package folder above `lib/`.
pub fn torch_version(lib_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lib_dir.parent()?.join("version.py")).ok()?;
    text.lines().find_map(|l| {
        let (_, value) = l.strip_prefix("__version__")?.split_once('=')?;
        Some(value.trim().trim_matches(['\'', '"']).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nmodel name\t: Test CPU @ 2GHz\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 2GHz\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 2\nphysical id\t: 0\ncore id\t\t: 1\n";

    #[test]
    fn parses_proc_files() {
        assert_eq!(cpu_model(CPUINFO).as_deref(), Some("Test CPU @ 2GHz"));
        assert_eq!(physical_cores(CPUINFO), Some(2));
        assert_eq!(
            mem_total("MemTotal:       2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let maps = "7f00-7f01 r-xp 00000000 08:01 12 /env/lib/python3/site-packages/torch/lib/libtorch_cpu.so\n";
        assert_eq!(
            libtorch_dir(maps),
            Some(PathBuf::from("/env/lib/python3/site-packages/torch/lib"))
        );
    }

    #[test]
    fn reads_torch_version_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("lib")).unwrap();
        std::fs::write(
            d.path().join("version.py"),
            "from typing import Optional\n__version__ = '2.11.0+cpu'\ndebug = False\n",
        )
        .unwrap();
        assert_eq!(
            torch_version(&d.path().join("lib")).as_deref(),
            Some("2.11.0+cpu")
        );
    }

    #[test]
    fn this_process_has_libtorch_loaded() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let m = Machine::detect(1, true);
        assert!(m.libtorch_dir.is_some(), "{m:?}");
        assert!(m.torch_version.is_some(), "{m:?}");
    }
}
