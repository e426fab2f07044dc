//! Unit tests of the outbox: commit, reopen, settle, bounds, damage and migration.

use super::*;
use crate::config::ByteSize;
use crate::record::{DeadLetterInfo, Meta, Origin, Reason, Violation};

fn record(i: u64, payload: &[u8]) -> Record {
    Record {
        meta: Meta {
            gateway: "gw".into(),
            source: "m".into(),
            origin: Origin::Mqtt {
                topic: format!("s/{}", i % 3),
            },
            received_at_ms: 1_000 + i,
            route: Some("r".into()),
            schema: None,
            kafka_topic: "t".into(),
            key: Some(format!("d{}", i % 3)),
            dead_letter: None,
        },
        payload: Bytes::copy_from_slice(payload),
    }
}

fn dead(i: u64) -> Record {
    let mut r = record(i, b"{bad");
    r.meta.received_at_ms = crate::record::now_ms();
    r.meta.kafka_topic = "t.DLQ".into();
    r.meta.dead_letter = Some(Box::new(DeadLetterInfo {
        id: 0,
        reason: Reason::NotJson,
        errors: vec![Violation::whole("nope")],
        original_len: None,
    }));
    r
}

fn config(max: u64, policy: WhenFull) -> QueueConfig {
    QueueConfig {
        max_bytes: ByteSize(max),
        when_full: policy,
        ..QueueConfig::default()
    }
}

fn open(dir: &Path, cfg: &QueueConfig, stats: Arc<Stats>) -> Arc<Outbox> {
    Arc::new(Outbox::open(dir, cfg, &DlqConfig::default(), stats).unwrap())
}

/// Commits `records` in one batch; returns their sequence numbers.
fn commit(outbox: &Outbox, records: &[Record]) -> Vec<u64> {
    let mut batch = outbox.batch();
    let seqs = records.iter().map(|r| batch.push(r)).collect();
    let dead: Vec<&Record> = records
        .iter()
        .filter(|r| r.meta.dead_letter.is_some())
        .collect();
    outbox.commit(&mut batch, &dead).unwrap();
    seqs
}

/// Every committed record from `from` on, with its sequence number.
fn read_all(outbox: &Arc<Outbox>, from: u64) -> Vec<(u64, Record)> {
    let mut reader = outbox.reader(from);
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        let frame = codec::Frame::parse(&frame).unwrap();
        for item in frame.records() {
            let (seq, r) = item.unwrap();
            if seq >= from {
                out.push((seq, r.to_record(seq)));
            }
        }
    }
    out
}

#[test]
fn records_survive_reopen_in_order_and_leave_only_when_settled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, WhenFull::DropOldest);
    let (seqs, base);
    {
        let outbox = open(dir.path(), &cfg, Arc::default());
        base = outbox.sequence_number(0);
        assert!(base >= crate::record::now_ms() * 1000 - 60_000_000);
        let records: Vec<Record> = (0..10).map(|i| record(i, &[i as u8])).collect();
        seqs = commit(&outbox, &records);
        assert_eq!(outbox.stats().depth, 10);
        assert_eq!(outbox.stats().oldest_received_ms, Some(1_000));
        outbox.settle(seqs[3], 0, seqs[3], Some(1_003)).unwrap();
        outbox.flush().unwrap();
    }
    let outbox = open(dir.path(), &cfg, Arc::default());
    assert_eq!(outbox.settled(), seqs[3], "the watermark survives a reopen");
    let rest = read_all(&outbox, outbox.settled());
    assert_eq!(rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs[3..]);
    assert_eq!(&rest[0].1.payload[..], [3]);
    assert_eq!(rest[0].1, record(3, &[3]));
    assert_eq!(outbox.stats().depth, 7);
    assert_eq!(outbox.stats().oldest_received_ms, Some(1_003));
    assert_eq!(
        outbox.sequence_number(0),
        base,
        "the sequence base survives"
    );
    let next = commit(&outbox, &[record(10, b"x")]);
    assert!(next[0] > seqs[9], "sequence numbers keep increasing");
}

#[test]
fn settled_segments_are_deleted_but_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB bound: 256 KiB segments.
    let outbox = open(
        dir.path(),
        &config(16 << 20, WhenFull::Block),
        Arc::default(),
    );
    let payload = vec![b'x'; 60_000];
    let mut last = 0;
    for i in 0..20 {
        last = commit(&outbox, &[record(i, &payload)])[0];
    }
    let segments = || segment::list(&dir.path().join("queue")).unwrap().len();
    assert!(segments() >= 4, "{} segments", segments());
    outbox.settle(last + 1, 0, last + 1, None).unwrap();
    assert_eq!(segments(), 1, "the newest segment stays");
    assert_eq!(outbox.stats().depth, 0);
    let next = commit(&outbox, &[record(99, b"y")])[0];
    assert_eq!(read_all(&outbox, next).len(), 1);
}

#[test]
fn drop_oldest_evicts_unsent_segments_and_counts_block_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::default());
    let payload = vec![7u8; 100_000];
    let outbox = open(
        dir.path(),
        &config(1 << 20, WhenFull::DropOldest),
        stats.clone(),
    );
    for i in 0..30 {
        commit(&outbox, &[record(i, &payload)]);
    }
    let s = outbox.stats();
    assert!(s.bytes <= (1 << 20) + 300_000, "{s:?}");
    assert_eq!(
        stats.snapshot().dropped + s.depth,
        30,
        "every record is stored or counted"
    );
    let left = read_all(&outbox, outbox.settled());
    assert_eq!(left.len() as u64, s.depth);
    assert_eq!(
        left.last().unwrap().1,
        record(29, &payload),
        "the newest stay"
    );

    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), &config(1 << 20, WhenFull::Block), stats);
    let mut stored = 0;
    loop {
        let mut batch = outbox.batch();
        batch.push(&record(stored, &payload));
        match outbox.commit(&mut batch, &[]) {
            Ok(_) => stored += 1,
            Err(CommitError::Full) => break,
            Err(CommitError::Failed(e)) => panic!("{e}"),
        }
        assert!(stored < 100);
    }
    assert!(stored > 0 && outbox.stats().depth == stored);
}

#[test]
fn dead_letters_go_to_the_local_store_in_the_same_commit_with_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(
        dir.path(),
        &config(1 << 20, WhenFull::Block),
        Arc::default(),
    );
    let seqs = commit(&outbox, &[record(0, b"{}"), dead(1), record(2, b"{}")]);
    let stored = outbox.dlq().all().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].meta.dead_letter.as_ref().unwrap().id, seqs[1]);
    assert_eq!(&stored[0].payload[..], b"{bad");
    // The dead letter is also queued for its DLQ topic.
    let queued = read_all(&outbox, 0);
    assert_eq!(&*queued[1].1.meta.kafka_topic, "t.DLQ");
    assert_eq!(outbox.stats().dead_letters, 1);
}

#[test]
fn a_reading_larger_than_sleds_blob_threshold_lives_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(
        dir.path(),
        &config(16 << 20, WhenFull::Block),
        Arc::default(),
    );
    let big = vec![b'z'; 300 << 10];
    let mut big_dead = dead(1);
    big_dead.payload = Bytes::from(big.clone());
    let seqs = commit(&outbox, &[record(0, &big), big_dead]);
    let back = read_all(&outbox, 0);
    assert_eq!(back[0].1.payload.len(), big.len());
    assert_eq!(
        outbox.dlq().get(seqs[1]).unwrap().unwrap().payload.len(),
        big.len()
    );
    let blobs = dir.path().join("outbox").join("blobs");
    let blob_files = std::fs::read_dir(&blobs).map_or(0, |d| d.count());
    assert_eq!(
        blob_files, 0,
        "sled wrote no blob file (those are never synced)"
    );
}

#[test]
fn a_corrupt_database_is_moved_aside_and_the_log_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig::default();
    {
        let outbox = open(dir.path(), &cfg, Arc::default());
        commit(&outbox, &[record(0, b"kept")]);
    }
    let db = dir.path().join("outbox");
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("conf"), b"garbage that is not a sled config\n").unwrap();
    std::fs::write(db.join("db"), vec![0xAB; 4096]).unwrap();
    let outbox = open(dir.path(), &cfg, Arc::default());
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.corrupt-")
        })
        .count();
    assert_eq!(aside, 1, "the corrupt database is kept for recovery");
    let left = read_all(&outbox, outbox.settled());
    assert_eq!(left.len(), 1, "the queued record is still there");
    assert_eq!(&left[0].1.payload[..], b"kept");
}

/// A format-1 value: "SG", version 1, metadata length, metadata JSON, payload.
fn v1_value(r: &Record) -> Vec<u8> {
    let meta = serde_json::to_vec(&r.meta).unwrap();
    let mut out = b"SG\x01".to_vec();
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&r.payload);
    out
}

#[test]
fn a_format_1_state_directory_is_migrated_with_its_backlog_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let base = 1_700_000_000_000_000u64;
    {
        // What sensorgate 0.1 wrote: sled trees queue, dlq, meta.
        let db = sled::Config::new()
            .path(dir.path().join("outbox"))
            .open()
            .unwrap();
        let queue = db.open_tree("queue").unwrap();
        let dlq = db.open_tree("dlq").unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("seq_base", &base.to_be_bytes()).unwrap();
        for seq in [5u64, 6, 7, 9, 12] {
            let mut r = record(seq, format!("r{seq}").as_bytes());
            if seq == 7 {
                r = dead(seq);
                let mut info = r.meta.dead_letter.take().unwrap();
                info.id = seq;
                r.meta.dead_letter = Some(info);
                dlq.insert(seq.to_be_bytes(), v1_value(&r)).unwrap();
            }
            queue.insert(seq.to_be_bytes(), v1_value(&r)).unwrap();
        }
        let mut old = dead(3);
        old.meta.dead_letter.as_mut().unwrap().id = 3;
        dlq.insert(3u64.to_be_bytes(), v1_value(&old)).unwrap();
        queue
            .insert(13u64.to_be_bytes(), b"garbage".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let cfg = QueueConfig::default();
    {
        // sled's I/O pool may still hold the old database (and its file lock) for a moment
        // after the last handle is dropped: wait for the lock, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let outbox = loop {
            match Outbox::open(dir.path(), &cfg, &DlqConfig::default(), Arc::default()) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break Arc::new(opened.unwrap()),
            }
        };
        assert_eq!(outbox.sequence_number(0), base, "same sequence base");
        let queued = read_all(&outbox, 0);
        let seqs: Vec<u64> = queued.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [5, 6, 7, 9, 12], "every record under its old number");
        assert_eq!(&queued[0].1.payload[..], b"r5");
        assert_eq!(
            queued[2].1.meta.dead_letter.as_ref().unwrap().reason,
            Reason::NotJson
        );
        assert_eq!(
            outbox.stats().depth,
            8,
            "12 - 5 + 1: gaps count until passed"
        );
        let ids: Vec<u64> = outbox
            .dlq()
            .all()
            .unwrap()
            .iter()
            .map(|r| r.meta.dead_letter.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids, [3, 7]);
        let next = commit(&outbox, &[record(100, b"new")])[0];
        assert!(next > 13, "new numbers start above every old one");
    }
    // Migrated once: a second open keeps what the first wrote.
    let outbox = open(dir.path(), &cfg, Arc::default());
    assert_eq!(read_all(&outbox, 0).len(), 6);
    let db_trees = outbox.db.tree_names();
    assert!(!db_trees.iter().any(|n| n.as_ref() == b"queue"));
    let quarantine = outbox.db.open_tree("quarantine").unwrap();
    assert_eq!(quarantine.len(), 1, "the undecodable value is kept");
}

#[test]
fn dead_letters_count_against_their_share_until_their_segment_goes() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB, drop-oldest, dead letters 10%: 1.6 MiB; 256 KiB segments.
    let cfg = config(16 << 20, WhenFull::DropOldest);
    let outbox = open(dir.path(), &cfg, Arc::default());
    let share = cfg.dead_letter_bytes();
    assert_eq!(share, (16 << 20) / 10);
    assert_eq!(outbox.dead_letter_room(), share);
    let mut seqs = Vec::new();
    for i in 0..2000 {
        seqs.extend(commit(&outbox, &[dead(i), record(i, &[0; 100])]));
    }
    let room = outbox.dead_letter_room();
    assert!(room < share, "dead letters are counted");
    assert!(
        share - room < 2000 * 400,
        "readings are not: {}",
        share - room
    );
    // Everything settled: every segment but the newest goes, and with it their dead letters.
    let end = *seqs.last().unwrap() + 1;
    outbox.settle(end, 0, end, None).unwrap();
    assert!(outbox.dead_letter_room() > room);
    // `block` drops nothing, so it has no dead-letter bound.
    assert_eq!(
        config(16 << 20, WhenFull::Block).dead_letter_bytes(),
        u64::MAX
    );
}
