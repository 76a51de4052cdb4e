//! The machine the figures come from, read from `/proc`.

use serde::Serialize;

/// The machine the figures come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// `/proc/meminfo` MemTotal, GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc` (empty fields where it cannot).
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine::from_proc(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            &read("/proc/cpuinfo"),
            &read("/proc/meminfo"),
            &read("/proc/sys/kernel/osrelease"),
        )
    }

    /// The machine described by the text of `/proc/cpuinfo`, `/proc/meminfo` and
    /// `/proc/sys/kernel/osrelease` (a field it cannot find stays empty or zero).
    pub fn from_proc(cpus: usize, cpuinfo: &str, meminfo: &str, osrelease: &str) -> Self {
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let mem_kib: f64 = field(meminfo, "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0.0);
        Machine {
            cpus,
            cpu_model: field(cpuinfo, "model name"),
            mem_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: osrelease.trim().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_text_gives_model_memory_and_kernel() {
        let m = Machine::from_proc(
            2,
            "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n",
            "MemTotal:        8148952 kB\nMemFree:  1 kB\n",
            "6.1.0-27-cloud-amd64\n",
        );
        assert_eq!(m.cpus, 2);
        assert_eq!(m.cpu_model, "AMD EPYC 7B13");
        assert_eq!(m.mem_gib, 7.8);
        assert_eq!(m.kernel, "6.1.0-27-cloud-amd64");
        let empty = Machine::from_proc(1, "", "", "");
        assert_eq!((empty.cpu_model.as_str(), empty.mem_gib), ("", 0.0));
    }
}
