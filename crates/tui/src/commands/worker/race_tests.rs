//! The worker's check-then-open race (issue 10): it validated an id when it parsed the request
//! and opened the file later, so a file swapped for a symbolic link in between was read from
//! outside DIR. Now the request is resolved and opened in one step, with `O_NOFOLLOW`, and
//! everything later reads that handle. These tests run the worker's own steps one at a time
//! and swap the file between them, so each interleaving is hit deterministically.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Gate, parse_request, read_input, resolve_id};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

/// DIR holding `victim.png`, and a file outside it that an attacker wants read.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), dir.join("victim.png")).unwrap();
    let outside = tmp.path().join("outside.png");
    std::fs::copy(sample("hannover_e1446fe8.png"), &outside).unwrap();
    let dir = dir.canonicalize().unwrap();
    (tmp, dir, outside)
}

/// Replaces `dir/victim.png` by a symbolic link to `target`.
fn swap_for_link(dir: &Path, target: &Path) {
    std::fs::rename(dir.join("victim.png"), dir.join("moved-away.png")).unwrap();
    std::os::unix::fs::symlink(target, dir.join("victim.png")).unwrap();
}

#[test]
fn a_swap_after_the_request_is_parsed_reads_the_original_file() {
    let (_tmp, dir, outside) = setup();
    let original = std::fs::read(dir.join("victim.png")).unwrap();
    let job = parse_request(b"classify victim.png\n", &dir, false)
        .unwrap()
        .unwrap();
    // Between parsing (validation and open) and running the job: the swap.
    swap_for_link(&dir, &outside);
    let image = read_input(&job).unwrap();
    assert_eq!(
        image.bytes(),
        original,
        "the job reads the file it opened, not the link"
    );
    assert_eq!(image.sha256(), format!("{:x}", Sha256::digest(&original)));
    assert_ne!(image.bytes(), std::fs::read(&outside).unwrap());
}

#[test]
fn a_swap_between_validation_and_open_is_refused() {
    let (_tmp, dir, outside) = setup();
    // parse_request's two steps, with the swap between them.
    let path = resolve_id(&dir, "victim.png").unwrap();
    swap_for_link(&dir, &outside);
    let e = Gate::UNTRUSTED.open_file(&path).unwrap_err().to_string();
    assert!(e.contains("is a symbolic link"), "{e}");
    // And the whole request, parsed after the swap, is refused.
    let Err(reply) = parse_request(b"classify victim.png\n", &dir, false) else {
        panic!("a request naming a link was accepted");
    };
    assert!(reply.starts_with("error classify victim.png "), "{reply}");
}

#[test]
fn a_link_to_a_file_inside_dir_is_refused_too() {
    // Even a link that stays inside DIR is not followed: what is opened is what was named.
    let (_tmp, dir, _outside) = setup();
    std::os::unix::fs::symlink(dir.join("victim.png"), dir.join("alias.png")).unwrap();
    assert!(parse_request(b"classify alias.png\n", &dir, false).is_err());
}
