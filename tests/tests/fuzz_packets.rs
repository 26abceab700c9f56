//! Packet fuzzing: the real XDP program, through `BPF_PROG_TEST_RUN`, against the
//! README's packet path written as a plain-Rust reference (`allowlist_tests::reference`),
//! on random policies (lists with port scopes, public ports, modes, features) and random,
//! mutated frames. Any disagreement in verdict or counted reason fails with the case —
//! the policy and the frames judged under it, in hex — ready to keep as a regression case
//! in `tests/fuzz/regressions/packets/`; those are replayed first, every run.
//!
//! Runs for `ALLOWLIST_FUZZ_SECONDS` (default 30) from `ALLOWLIST_FUZZ_SEED` (default:
//! the clock; printed, so a failure can be replayed). `cargo xtask fuzz --seconds N
//! packets` runs it longer. Needs root (BPF, bpffs).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use allowlist_tests::packet_fuzz::{flow_key, random_policy, Case, FrameMaker};
use allowlist_tests::reference::{Judge, Policy};
use allowlist_tests::rng::Rng;
use allowlist_tests::test_filter::{TestFilter, Verdict};

/// Frames judged under one policy before the next (each policy loads the program anew).
const FRAMES_PER_POLICY: usize = 400;

fn budget() -> Duration {
    let seconds = std::env::var("ALLOWLIST_FUZZ_SECONDS")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

fn seed() -> u64 {
    std::env::var("ALLOWLIST_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// A filter loaded with `policy`, or `None` when the list does not compile (more port
/// ranges for one source than the kernel holds: refused before the kernel, by design).
fn filter_for(policy: &Policy) -> Option<TestFilter> {
    let compiled = Case::compiled(policy).ok()?;
    let mut filter = TestFilter::open();
    filter
        .filter()
        .apply(&compiled)
        .unwrap_or_else(|error| panic!("applying {compiled:?}: {error}"));
    filter.set_mode(policy.mode);
    filter.set_features(Case::features(policy));
    let flows: Vec<_> = policy.flows.iter().map(flow_key).collect();
    filter
        .filter()
        .seed_flows(&flows)
        .unwrap_or_else(|error| panic!("seeding {flows:?}: {error}"));
    Some(filter)
}

/// Judges `frames` in order with the program and the reference; the first disagreement.
fn disagreement(
    filter: &mut TestFilter,
    judge: &mut Judge,
    frames: &[Vec<u8>],
) -> Option<(usize, String)> {
    for (index, frame) in frames.iter().enumerate() {
        let expected = judge.judge(frame);
        let expected_verdict = if expected.drops() {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        match filter.try_judge(frame) {
            Ok((verdict, reason)) if (verdict, reason) == (expected_verdict, expected) => {}
            Ok((verdict, reason)) => {
                return Some((
                    index,
                    format!(
                    "the program said {verdict:?} ({}), the README says {expected_verdict:?} ({})",
                    reason.name(),
                    expected.name()
                ),
                ))
            }
            Err(problem) => return Some((index, problem)),
        }
    }
    None
}

fn regression_cases() -> Vec<(String, Case)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/packets");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "case")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            let case =
                Case::parse(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            cases.push((path.display().to_string(), case));
        }
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

#[test]
fn the_xdp_program_judges_every_frame_as_the_readme_says() {
    for (name, case) in regression_cases() {
        let mut filter = filter_for(&case.policy)
            .unwrap_or_else(|| panic!("{name}: the case's list does not compile"));
        let mut judge = Judge::new(case.policy.clone());
        if let Some((index, problem)) = disagreement(&mut filter, &mut judge, &case.frames) {
            panic!("regression case {name}, frame {}: {problem}", index + 1);
        }
    }

    let seed = seed();
    eprintln!(
        "packet fuzzing for {:?} from ALLOWLIST_FUZZ_SEED={seed}",
        budget()
    );
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + budget();
    let (mut policies, mut frames_judged) = (0usize, 0usize);
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    while Instant::now() < deadline {
        let (policy, networks) = random_policy(&mut rng);
        let Some(mut filter) = filter_for(&policy) else {
            continue;
        };
        policies += 1;
        let mut maker = FrameMaker::new(&policy, &networks, &mut rng);
        let frames: Vec<Vec<u8>> = (0..FRAMES_PER_POLICY)
            .map(|_| maker.frame(&mut rng))
            .collect();
        let mut judge = Judge::new(policy.clone());
        if let Some((index, problem)) = disagreement(&mut filter, &mut judge, &frames) {
            let case = Case {
                policy: policy.clone(),
                frames: frames[..=index].to_vec(),
            };
            panic!(
                "{problem}\non the last frame of this case (ALLOWLIST_FUZZ_SEED={seed}); keep it as \
                 tests/fuzz/regressions/packets/NAME.case once fixed:\n{}",
                case.to_text()
            );
        }
        frames_judged += frames.len();
        let mut replay = Judge::new(policy);
        for frame in &frames {
            *reasons.entry(replay.judge(frame).name()).or_default() += 1;
        }
    }
    eprintln!(
        "{policies} policies, {frames_judged} frames, all judged as the README says: {reasons:?}"
    );
    assert!(
        policies > 0,
        "the budget ran out before any policy was tried"
    );
}
