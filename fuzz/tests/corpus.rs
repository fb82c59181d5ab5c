//! The test suite's short fuzz stage: each target's body over its committed seeds
//! (`corpus/<target>/`) and over deterministic mutations of them, without libFuzzer or a
//! sanitizer build (`scripts/fuzz` runs the real, coverage-guided fuzzer).
//!
//! `HARVEST_FUZZ_MUTATIONS` sets the number of mutated inputs per target (default 4000).

use std::path::{Path, PathBuf};

use harvest_fuzz::{Body, TARGETS};

const DEFAULT_MUTATIONS: usize = 4000;

/// splitmix64: a fixed seed gives the same inputs on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that parsers treat specially: delimiters, signs, quotes, escapes, large numbers.
const INTERESTING: &[&[u8]] = &[
    b"\n",
    b" ",
    b"=",
    b"%",
    b"%n",
    b"-1",
    b"0",
    b"4294967295",
    b"18446744073709551615",
    b"99999999999999999999",
    b"1e308",
    b"NaN",
    b"inf",
    b"\"",
    b"\\u0000",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b";",
    b"#",
    b"\xff",
    b"\xc3\x28",
    b"h",
    b"ms",
    b"[[plugins]]",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
];

/// One random edit of `input`, spliced with `other` at times.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, token.iter().copied());
            }
            4 => out.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let to = (from + 1 + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                // Repeat a stretch: long lines, deep nesting, many records.
                let end = (at + 1 + rng.below(32)).min(out.len());
                let chunk = out[at.min(end)..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
        }
    }
    out
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no seed corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs one target over its seeds and their mutations; a panic names the input (saved under
/// the target directory for `cargo fuzz run <target> <file>`).
fn run(target: &str) {
    let (_, body) = TARGETS.iter().find(|(n, _)| *n == target).unwrap();
    let seeds = seeds(target);
    assert!(seeds.len() >= 3, "{target}: commit a few seeds");
    for (path, bytes) in &seeds {
        check(target, *body, bytes, &path.display().to_string());
    }
    let mutations = std::env::var("HARVEST_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MUTATIONS);
    let mut rng = Rng(0x0068_6172_7665_7374 ^ target.len() as u64);
    let mut pool: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    for i in 0..mutations {
        let a = rng.below(pool.len());
        let b = rng.below(pool.len());
        let input = mutate(&mut rng, &pool[a], &pool[b]);
        check(target, *body, &input, &format!("mutation {i}"));
        // Keep some mutants as parents: edits accumulate, as in a fuzzer's corpus.
        if i % 8 == 0 && input.len() < 1 << 16 {
            pool.push(input);
        }
    }
}

fn check(target: &str, body: Body, input: &[u8], name: &str) {
    if std::panic::catch_unwind(|| body(input)).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{target}-{}", name.replace(['/', ' '], "_")));
        std::fs::write(&file, input).unwrap();
        panic!(
            "{target} failed on {name}; input saved in {} (reproduce: scripts/fuzz --reproduce {target} {})",
            file.display(),
            file.display()
        );
    }
}

#[test]
fn invoke_frame() {
    run("invoke_frame");
}

#[test]
fn memory_op() {
    run("memory_op");
}

#[test]
fn plugin_message() {
    run("plugin_message");
}

#[test]
fn swf_trace() {
    run("swf_trace");
}

#[test]
fn agent_config() {
    run("agent_config");
}

#[test]
fn scheduler_config() {
    run("scheduler_config");
}

#[test]
fn policy_config() {
    run("policy_config");
}

#[test]
fn spank_args() {
    run("spank_args");
}

#[test]
fn every_target_has_a_test_and_a_libfuzzer_entry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "{name}"
        );
        assert!(root.join("corpus").join(name).is_dir(), "{name}");
    }
}
