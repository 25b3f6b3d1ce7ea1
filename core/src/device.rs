//! Devices: where a job can run.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A place that runs models: the CPU, or one CUDA GPU by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// Every device this process can use: each CUDA GPU that libtorch sees, else the CPU alone.
    ///
    /// This is what `auto` means everywhere in vgen: when there is a GPU, work does not silently fall back to the
    /// CPU, where a video would take hours.
    pub fn auto() -> Vec<Device> {
        let gpus = cuda_count();
        if gpus > 0 { (0..gpus).map(Device::Cuda).collect() } else { vec![Device::Cpu] }
    }

    /// Every device that exists here, the CPU included.
    pub fn all() -> Vec<Device> {
        let mut all = vec![Device::Cpu];
        all.extend((0..cuda_count()).map(Device::Cuda));
        all
    }

    /// Checks that the device exists on this machine.
    pub fn check_present(self) -> Result<Self> {
        match self {
            Device::Cpu => Ok(self),
            Device::Cuda(i) => {
                let n = cuda_count();
                if i < n {
                    Ok(self)
                } else if n == 0 {
                    Err(Error::new(
                        crate::ErrorCode::Unavailable,
                        format!(
                            "{self} was requested but no CUDA GPU is visible: {}",
                            crate::runtime::init().describe()
                        ),
                    ))
                } else {
                    Err(Error::new(
                        crate::ErrorCode::Unavailable,
                        format!("{self} was requested but only cuda:0..cuda:{} exist", n - 1),
                    ))
                }
            }
        }
    }

    pub fn to_tch(self) -> tch::Device {
        match self {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(i) => tch::Device::Cuda(i),
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

fn cuda_count() -> usize {
    crate::runtime::init();
    if tch::Cuda::is_available() { tch::Cuda::device_count().max(0) as usize } else { 0 }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// Parses `cpu`, `cuda` (meaning `cuda:0`) or `cuda:N`. `auto` is a list, not one device: see [`Device::auto`].
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => t.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()).map(Device::Cuda).ok_or_else(|| {
                Error::invalid(format!("unknown device {s:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""))
            }),
        }
    }
}

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| serde::de::Error::custom(e.message().to_string()))
    }
}

/// The result of running a small, real computation on a device: proof that libtorch works there, and a rough
/// measure of its speed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Probe {
    pub device: Device,
    /// Dense fp32 matrix-multiply throughput, in GFLOP/s.
    pub matmul_gflops: f64,
    /// The largest difference between libtorch's fused attention and attention written out by hand.
    pub attention_max_error: f64,
}

impl Device {
    /// Runs a matrix multiply and an attention on this device and checks the attention against its definition.
    pub fn probe(self) -> Result<Probe> {
        use tch::{Kind, Tensor};
        let device = self.check_present()?;
        let dev = device.to_tch();
        let _guard = tch::no_grad_guard();
        let n: i64 = 512;
        let a = Tensor::f_randn([n, n], (Kind::Float, dev))?;
        let b = Tensor::f_randn([n, n], (Kind::Float, dev))?;
        let _ = a.f_matmul(&b)?; // warm-up: first calls allocate and pick kernels
        let reps = 8;
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64)
            }
        };
        sync();
        let start = std::time::Instant::now();
        for _ in 0..reps {
            let _ = a.f_matmul(&b)?;
        }
        sync();
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let matmul_gflops = 2.0 * (n * n * n) as f64 * reps as f64 / secs / 1e9;

        let (heads, tokens, dim) = (2, 64, 32);
        let q = Tensor::f_randn([1, heads, tokens, dim], (Kind::Float, dev))?;
        let k = Tensor::f_randn([1, heads, tokens, dim], (Kind::Float, dev))?;
        let v = Tensor::f_randn([1, heads, tokens, dim], (Kind::Float, dev))?;
        let fused = Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)?;
        let scores = q.f_matmul(&k.f_transpose(-2, -1)?)? / (dim as f64).sqrt();
        let manual = scores.f_softmax(-1, Kind::Float)?.f_matmul(&v)?;
        let attention_max_error = (fused - manual).f_abs()?.f_max()?.f_double_value(&[])?;
        Ok(Probe { device, matmul_gflops, attention_max_error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
        let e = "gpu0".parse::<Device>().unwrap_err();
        assert!(e.message().contains("gpu0"), "{e}");
        assert!("cuda:-1".parse::<Device>().is_err());
    }

    #[test]
    fn auto_is_never_empty_and_cpu_always_exists() {
        assert!(!Device::auto().is_empty());
        assert_eq!(Device::all()[0], Device::Cpu);
        assert!(Device::Cpu.check_present().is_ok());
        assert!(Device::Cuda(99).check_present().is_err());
    }

    #[test]
    fn probe_computes_attention_correctly_on_every_device() {
        for device in Device::all() {
            let p = device.probe().unwrap();
            assert!(p.matmul_gflops > 0.0);
            assert!(p.attention_max_error < 1e-4, "{device}: {}", p.attention_max_error);
        }
    }
}
