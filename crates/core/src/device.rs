//! Choosing where the models run: `auto`, `cpu`, `cuda` or `cuda:N`, decided once per process.

use tch::Device;

use crate::{CoreError, Result};

/// Parses a `--device` value. `auto` is CUDA when libtorch sees a GPU, else the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let unavailable =
        || CoreError::Invalid(format!("--device {spec}: no CUDA device is available"));
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => tch::Cuda::is_available()
            .then_some(Device::Cuda(0))
            .ok_or_else(unavailable),
        _ => {
            let index = spec
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    CoreError::Invalid(format!(
                        "--device {spec}: expected auto, cpu, cuda or cuda:N"
                    ))
                })?;
            if index < tch::Cuda::device_count() as usize {
                Ok(Device::Cuda(index))
            } else {
                Err(unavailable())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cpu_and_refuses_nonsense() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(
            parse_device("gpu")
                .unwrap_err()
                .to_string()
                .contains("expected auto")
        );
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(
                parse_device("cuda")
                    .unwrap_err()
                    .to_string()
                    .contains("no CUDA")
            );
        }
    }
}
