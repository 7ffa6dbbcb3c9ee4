use super::*;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

const SAMPLES: [&str; 3] = [
    "hannover_2c35005f.png",
    "nih_00001299_000.png",
    "nih_00001385_000.png",
];

fn predicted(p_covid: f32) -> Predicted {
    Predicted {
        label: if p_covid >= 0.7 { "covid" } else { "normal" }.into(),
        confidence: p_covid.max(1.0 - p_covid),
        positive: "covid".into(),
        probabilities: [("covid".into(), p_covid), ("normal".into(), 1.0 - p_covid)].into(),
        threshold: 0.7,
        flags: Vec::new(),
    }
}

#[test]
fn labels_parse_and_print_as_plain_words() {
    assert_eq!("Covid".parse::<Label>().unwrap(), Label::Covid);
    assert_eq!(" normal ".parse::<Label>().unwrap(), Label::Normal);
    assert_eq!("skip".parse::<Label>().unwrap(), Label::Skip);
    assert_eq!(
        "pneumonia".parse::<Label>().unwrap(),
        Label::Class("pneumonia".into())
    );
    assert!("".parse::<Label>().is_err());
    assert!("two words".parse::<Label>().is_err());
    assert_eq!(Label::Skip.class(), None);
    assert_eq!(serde_json::to_string(&Label::Covid).unwrap(), "\"covid\"");
    let back: Label = serde_json::from_str("\"normal\"").unwrap();
    assert_eq!(back, Label::Normal);
}

#[test]
fn uncertainty_is_one_on_the_threshold_and_zero_when_certain() {
    let u = |p: f32| predicted(p).uncertainty();
    assert!((u(0.7) - 1.0).abs() < 1e-6);
    assert!(u(0.0).abs() < 1e-6);
    assert!(u(1.0).abs() < 1e-6);
    // Halfway from the threshold to certainty is one half, on either side.
    assert!((u(0.85) - 0.5).abs() < 1e-5);
    assert!((u(0.35) - 0.5).abs() < 1e-5);
    assert!(u(0.65) > u(0.95));
}

#[test]
fn rfc3339_formats_known_instants() {
    use std::time::Duration;
    assert_eq!(
        rfc3339_utc(SystemTime::UNIX_EPOCH),
        "1970-01-01T00:00:00.000Z"
    );
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
    assert_eq!(rfc3339_utc(t), "2024-02-29T12:34:56.789Z");
}

/// Undo is a review event: the undone review stays in the history with who undid it, the
/// review before it (not undone) is current again, and with none the entry is pending again.
#[test]
fn undo_takes_back_the_last_review_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    let file = sample(SAMPLES[1]);
    let id = queue
        .label_file(&file, Label::Normal, "alice", Some(predicted(0.3)), None)
        .unwrap()
        .id;
    queue.label(&id, Label::Covid, "bob").unwrap();

    let item = queue.undo(&id, "carol").unwrap();
    let state = &queue.get(&id).unwrap().state;
    assert_eq!(state, &item.state, "what undo returns is what it wrote");
    assert_eq!(state.state, ReviewState::Reviewed);
    let review = state.review.as_ref().unwrap();
    assert_eq!(
        (&review.label, review.reviewer.as_str()),
        (&Label::Normal, "alice")
    );
    assert_eq!(state.history.len(), 1);
    let undone = &state.history[0];
    assert_eq!(
        (&undone.label, undone.reviewer.as_str()),
        (&Label::Covid, "bob")
    );
    assert_eq!(undone.undone.as_ref().unwrap().reviewer, "carol");

    // Undoing alice's label too leaves the entry unreviewed, both reviews kept.
    let item = queue.undo(&id, "carol").unwrap();
    assert_eq!(item.state.state, ReviewState::PendingReview);
    assert_eq!(item.state.review, None);
    assert_eq!(item.state.history.len(), 2);
    assert!(item.state.history.iter().all(|r| r.undone.is_some()));
    assert!(
        queue.training_rows().unwrap().is_empty(),
        "nothing to train on"
    );
    // Nothing left to undo: an error, and the state is as it was.
    let err = queue.undo(&id, "carol").unwrap_err().to_string();
    assert!(err.contains("no review to undo"), "{err}");
    assert_eq!(queue.get(&id).unwrap().state, item.state);
    // A label after the undos is current; the undone ones stay in the history.
    let item = queue.label(&id, Label::Skip, "dave").unwrap();
    assert_eq!(item.state.review.unwrap().label, Label::Skip);
    assert_eq!(item.state.history.len(), 2);
}

#[test]
fn label_file_imports_once_then_labels_the_entry_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    let file = sample(SAMPLES[1]);
    let item = queue
        .label_file(
            &file,
            Label::Normal,
            "alice",
            Some(predicted(0.3)),
            Some("f1ngerprint"),
        )
        .unwrap();
    assert_eq!(item.id.len(), ID_LEN);
    assert_eq!(item.state.state, ReviewState::Reviewed);
    assert_eq!(item.state.source_name, SAMPLES[1]);
    assert_eq!(
        std::fs::read(item.image_path()).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert!(file.exists(), "the imported file stays where it was");
    assert_eq!(item.report().unwrap(), None);

    // The same content again labels the same entry; the first review moves to the history.
    let again = queue
        .label_file(&file, Label::Covid, "bob", None, None)
        .unwrap();
    assert_eq!(again.id, item.id);
    let listed = queue.list(Order::Time).unwrap();
    assert_eq!(listed.len(), 1);
    let state = &listed[0].state;
    assert_eq!(state.review.as_ref().unwrap().label, Label::Covid);
    assert_eq!(state.review.as_ref().unwrap().reviewer, "bob");
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].reviewer, "alice");
    assert_eq!(state.predicted, Some(predicted(0.3)), "prediction kept");
    assert_eq!(
        state.model.as_deref(),
        Some("f1ngerprint"),
        "and the models that made it"
    );
    // Nothing left in staging, and no temporary files in the entry.
    assert_eq!(std::fs::read_dir(queue.staging()).unwrap().count(), 0);
    let names: Vec<String> = std::fs::read_dir(&listed[0].dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn label_refuses_non_images_unknown_ids_and_empty_reviewers() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let err = queue
        .label_file(&text, Label::Covid, "alice", None, None)
        .unwrap_err();
    assert!(err.to_string().contains("notes.png"), "{err}");
    assert!(queue.label("0123456789abcdef", Label::Covid, "a").is_err());
    assert!(queue.label("zz", Label::Covid, "a").is_err());
    let item = queue
        .label_file(&sample(SAMPLES[0]), Label::Skip, "alice", None, None)
        .unwrap();
    assert!(queue.label(&item.id, Label::Covid, "  ").is_err());
    // A unique prefix is enough.
    let relabelled = queue.label(&item.id[..6], Label::Covid, "carol").unwrap();
    assert_eq!(relabelled.id, item.id);
    assert!(Queue::open(dir.path().join("missing")).is_err());
}

#[test]
fn list_orders_by_uncertainty_or_time_and_training_rows_skip_skips() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    let p = [0.99, 0.72, 0.2];
    let labels = [Label::Covid, Label::Skip, Label::Normal];
    let mut ids = Vec::new();
    for ((name, p), label) in SAMPLES.iter().zip(p).zip(labels) {
        let item = queue
            .label_file(&sample(name), label, "alice", Some(predicted(p)), None)
            .unwrap();
        ids.push(item.id);
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let by_time: Vec<String> = queue
        .list(Order::Time)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(by_time, ids);
    let by_doubt: Vec<String> = queue
        .list(Order::Uncertainty)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    // Uncertainty (threshold 0.7): 0.99 -> 0.03, 0.72 -> 0.93, 0.2 -> 0.29.
    assert_eq!(
        by_doubt,
        vec![ids[1].clone(), ids[2].clone(), ids[0].clone()]
    );

    // A flagged prediction comes first, however certain it is.
    let mut flagged = predicted(0.999);
    flagged.flags = vec![crate::trust::Flag::Unfamiliar];
    let odd = queue
        .label_file(
            &sample("nih_00002013_002.png"),
            Label::Skip,
            "alice",
            Some(flagged),
            None,
        )
        .unwrap();
    let first = &queue.list(Order::Uncertainty).unwrap()[0];
    assert_eq!(first.id, odd.id);

    let rows = queue.training_rows().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].label, "covid");
    assert_eq!(rows[0].patient, format!("queue-{}", ids[0]));
    assert_eq!(rows[1].label, "normal");
    assert!(rows.iter().all(|r| r.path.is_file()));
}

#[test]
fn unreadable_entries_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    queue
        .label_file(&sample(SAMPLES[0]), Label::Covid, "alice", None, None)
        .unwrap();
    let broken = queue.entry_dir("00000000000000aa");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join(STATE_FILE), "{ half").unwrap();
    // Not entries at all: ignored.
    std::fs::create_dir_all(queue.entries().join("notes")).unwrap();
    let (items, problems) = queue.list_checked(Order::Time).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().contains("00000000000000aa"));
}

#[test]
fn staging_is_invisible_and_leftovers_of_dead_processes_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    // A leftover of a process that no longer runs (pid beyond the kernel's maximum).
    let dead = queue.staging().join("0123456789abcdef.4194305.0");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("image.png"), b"half").unwrap();
    // Work in progress of this (live) process.
    let mut live = queue.stage("fedcba9876543210").unwrap();
    live.write("image.png", b"x").unwrap();
    assert!(queue.list(Order::Time).unwrap().is_empty());
    assert_eq!(queue.clean_staging().unwrap(), 1);
    assert!(!dead.exists());
    assert_eq!(std::fs::read_dir(queue.staging()).unwrap().count(), 1);
    drop(live);
    assert_eq!(std::fs::read_dir(queue.staging()).unwrap().count(), 0);
}

#[test]
fn a_second_commit_of_one_id_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::create(dir.path()).unwrap();
    let item = queue
        .label_file(&sample(SAMPLES[0]), Label::Covid, "alice", None, None)
        .unwrap();
    let before = std::fs::read(item.dir.join(STATE_FILE)).unwrap();
    let mut other = queue.stage(&item.id).unwrap();
    other.write(STATE_FILE, b"{}").unwrap();
    assert!(matches!(other.commit().unwrap(), Commit::Exists));
    assert_eq!(std::fs::read(item.dir.join(STATE_FILE)).unwrap(), before);
    assert_eq!(std::fs::read_dir(queue.staging()).unwrap().count(), 0);
}
