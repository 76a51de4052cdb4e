//! Sieves the first `COUNT` primes into `$OUT_DIR/primes.bin` (u32, little endian), the table
//! the agent embeds.
use std::io::Write;

/// Primes in the table: 470,000 × 4 bytes ≈ 1.8 MiB, so the component is about 2 MiB.
const COUNT: usize = 470_000;
/// Above the 470,000th prime (6,958,807).
const LIMIT: usize = 7_000_000;

fn main() {
    let mut composite = vec![false; LIMIT + 1];
    let mut table = Vec::with_capacity(COUNT * 4);
    let mut n = 2;
    while table.len() < COUNT * 4 {
        assert!(n <= LIMIT, "LIMIT too small for {COUNT} primes");
        if !composite[n] {
            table.extend_from_slice(&(n as u32).to_le_bytes());
            let mut m = n * n;
            while m <= LIMIT {
                composite[m] = true;
                m += n;
            }
        }
        n += 1;
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::File::create(out.join("primes.bin"))
        .and_then(|mut f| f.write_all(&table))
        .expect("write primes.bin");
    println!("cargo:rerun-if-changed=build.rs");
}
