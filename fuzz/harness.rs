//! The one fuzz harness of the workspace, compiled into each crate's `tests/fuzz.rs` with
//! `#[path]`. A target is a directory of seed inputs under `fuzz/corpus/<target>/` and a
//! check that feeds one input to a parser. [`fuzz`] runs every seed, then proptest cases
//! that mutate the seeds (bit flips, length fields set to extremes, truncation, insertion,
//! splicing of two seeds) or are arbitrary bytes. [`check`] runs a structured strategy
//! (e.g. frames for an encode/decode round trip) the same way.
//!
//! Every case runs under an allocation meter: a parser that sizes a buffer from a length
//! field it has not checked against the input fails the case even when the allocation
//! succeeds. A panic fails the case too; proptest then shrinks the input and records
//! its seed under `fuzz/proptest-regressions/`, which later runs replay first.
//!
//! `PODRUN_FUZZ_CASES` sets the number of generated cases per target (default
//! [`DEFAULT_CASES`], a few seconds in CI).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

/// Generated cases per target when `PODRUN_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 256;

/// Bounds one target's parser must stay within for a single input.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Directory name under `fuzz/corpus/` and name of the regression file.
    pub name: &'static str,
    /// Largest single allocation allowed while parsing one input.
    pub largest_alloc: usize,
    /// Sum of all allocations allowed while parsing one input.
    pub total_alloc: usize,
    /// Longest input generated from nothing (mutations of seeds may grow past it a little).
    pub max_len: usize,
}

impl Target {
    pub const fn new(name: &'static str) -> Self {
        Target {
            name,
            largest_alloc: 4 << 20,
            total_alloc: 64 << 20,
            max_len: 4096,
        }
    }

    pub const fn largest_alloc(mut self, bytes: usize) -> Self {
        self.largest_alloc = bytes;
        self
    }

    pub const fn total_alloc(mut self, bytes: usize) -> Self {
        self.total_alloc = bytes;
        self
    }
}

/// The number of generated cases per target.
pub fn cases() -> u32 {
    std::env::var("PODRUN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// `fuzz/` at the root of the workspace.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The seed inputs of `target`, by file name, in name order.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading corpus {}: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e.expect("reading a corpus entry").path();
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("reading seed {}: {e}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                data,
            )
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "corpus {} has no seeds", dir.display());
    seeds
}

/// Runs every seed of `target` through `check`, then the configured number of mutated
/// and arbitrary inputs. `check` returns `Err` when a property other than "no panic,
/// bounded allocation" is broken (a round trip differs, a file escaped).
pub fn fuzz(target: Target, check: impl Fn(&[u8]) -> Result<(), String>) {
    let seeds = corpus(target.name);
    for (name, seed) in &seeds {
        if let Err(e) = metered(target, || check(seed)) {
            panic!("{}: seed {name}: {e}", target.name);
        }
    }
    let seeds = seeds.into_iter().map(|(_, s)| s).collect();
    check_strategy(target, inputs(seeds, target.max_len), |input| check(&input));
}

/// Runs `check` on the configured number of values of `strategy`, with the allocation
/// bounds of `target` and its regression file.
pub fn check_strategy<S>(
    target: Target,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), String>,
) where
    S: Strategy,
    S::Value: Clone + std::fmt::Debug,
{
    let file = fuzz_dir()
        .join("proptest-regressions")
        .join(format!("{}.txt", target.name));
    let file: &'static str = Box::leak(file.to_string_lossy().into_owned().into_boxed_str());
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| {
        metered(target, || check(value)).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            panic!(
                "{}: {reason}\nminimal failing input: {value:?}",
                target.name
            )
        }
        Err(e) => panic!("{}: {e}", target.name),
    }
}

/// Runs `f` with the allocation meter reset and checks the bounds afterwards.
fn metered(target: Target, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    reset_meter();
    let result = f();
    let (largest, total) = read_meter();
    result?;
    if largest > target.largest_alloc {
        return Err(format!(
            "one allocation of {largest} bytes (bound {})",
            target.largest_alloc
        ));
    }
    if total > target.total_alloc {
        return Err(format!(
            "{total} bytes allocated in all (bound {})",
            target.total_alloc
        ));
    }
    Ok(())
}

/// `Ok` for a parser's error that says what is wrong; the error a check returns for one
/// with an empty message.
pub fn clear_error(e: impl std::fmt::Display) -> Result<(), String> {
    if e.to_string().trim().is_empty() {
        Err("an error without a message".into())
    } else {
        Ok(())
    }
}

/// Renders bytes for a failure message.
pub fn show(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}

// --- inputs ---

/// One edit of a seed. Positions and lengths are taken modulo the current input, so every
/// mutation applies to every seed.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// A 32-bit big-endian word (most length and count fields) set to an extreme.
    SetWord(usize, u32),
    Truncate(usize),
    Remove(usize, usize),
    Insert(usize, Vec<u8>),
    /// Copies a run of another seed in.
    Splice(usize, usize, usize, usize),
    /// Repeats a run of the input in place.
    Repeat(usize, usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(0u8),
        Just(0xff),
        Just(0x7f),
        Just(0x80),
        Just(b'/'),
        Just(b'.'),
        any::<u8>()
    ];
    let word = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(0x7fff_ffff),
        Just(0x00ff_ffff),
        Just(0x8000_0000),
        0u32..64,
        any::<u32>()
    ];
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        2 => (any::<usize>(), byte).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        2 => (any::<usize>(), word).prop_map(|(p, w)| Mutation::SetWord(p, w)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Remove(p, n)),
        1 => (any::<usize>(), vec(any::<u8>(), 1..32)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..256)
            .prop_map(|(s, at, from, n)| Mutation::Splice(s, at, from, n)),
        1 => (any::<usize>(), 1usize..32, 1u8..16).prop_map(|(p, n, k)| Mutation::Repeat(p, n, k)),
    ]
}

fn apply(seeds: &[Vec<u8>], seed: usize, edits: &[Mutation]) -> Vec<u8> {
    let mut b = seeds[seed].clone();
    for m in edits {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
        match m {
            Mutation::FlipBit(p, bit) if !b.is_empty() => {
                let i = at(*p, b.len());
                b[i] ^= 1 << bit;
            }
            Mutation::SetByte(p, v) if !b.is_empty() => {
                let i = at(*p, b.len());
                b[i] = *v;
            }
            Mutation::SetWord(p, w) if b.len() >= 4 => {
                let i = at(*p, b.len() - 3);
                b[i..i + 4].copy_from_slice(&w.to_be_bytes());
            }
            Mutation::Truncate(p) => {
                let n = at(*p, b.len() + 1);
                b.truncate(n);
            }
            Mutation::Remove(p, n) if !b.is_empty() => {
                let i = at(*p, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Insert(p, bytes) => {
                let i = at(*p, b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Splice(s, p, from, n) => {
                let other = &seeds[s % seeds.len()];
                if !other.is_empty() {
                    let start = from % other.len();
                    let end = (start + n).min(other.len());
                    let i = at(*p, b.len() + 1);
                    b.splice(i..i, other[start..end].iter().copied());
                }
            }
            Mutation::Repeat(p, n, k) if !b.is_empty() => {
                let i = at(*p, b.len());
                let end = (i + n).min(b.len());
                let run = b[i..end].to_vec();
                for _ in 0..*k {
                    b.splice(end..end, run.iter().copied());
                }
            }
            _ => {}
        }
    }
    b
}

/// Mutated seeds, mostly, and some arbitrary bytes.
fn inputs(seeds: Vec<Vec<u8>>, max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let seeds = Arc::new(seeds);
    let n = seeds.len();
    let mutated =
        (0..n, vec(mutation(), 1..8)).prop_map(move |(seed, edits)| apply(&seeds, seed, &edits));
    prop_oneof![
        4 => mutated,
        1 => vec(any::<u8>(), 0..max_len),
    ]
}

// --- allocation meter ---

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    let _ = TOTAL.try_with(|c| c.set(c.get().saturating_add(size)));
}

fn reset_meter() {
    LARGEST.with(|c| c.set(0));
    TOTAL.with(|c| c.set(0));
}

fn read_meter() -> (usize, usize) {
    (LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

/// The system allocator, counting what the current thread asks for.
struct Meter;

// SAFETY: every call is forwarded unchanged to the system allocator; the meter only
// updates thread-local counters, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static METER: Meter = Meter;
