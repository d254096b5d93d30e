//! Writes the seed corpus: `cargo run --manifest-path fuzz/gen-seeds/Cargo.toml [DIR]` (DIR
//! defaults to fuzz/corpus). Files are named after what they hold
//! and overwritten; the storage seeds come out with other bytes each run (queue ids and CRC
//! salts are random) but cover the same cases.
//!
//! - `frame`: every hex example of protocol.md (whole conversations, both directions), and
//!   each of their frames as `opcode ++ payload` for the payload decoders.
//! - `meta`, `header`: blocks and tables built with the codec, including protocol.md's.
//! - `recovery`: queue directories written by the real storage engine (one segment, rotated
//!   segments with acks, an unsynced tail, relocated copies, a clean stop), in the format of
//!   `sluice_fuzz::recovery::Case`.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sluice_broker::storage::{QueueLog, Store, StoreConfig};
use sluice_client::wire::{put_headers, FrameDecoder, HeaderValue, MessageMeta, Properties};
use sluice_fuzz::recovery::{self, Case, CaseFile, FileKind};

const PROTOCOL_MD: &str = include_str!("../../../protocol.md");

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"));
    let mut written = 0;
    let mut seed = |target: &str, name: &str, bytes: &[u8]| {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("seed written");
        written += 1;
    };
    frame_seeds(&mut seed);
    meta_seeds(&mut seed);
    header_seeds(&mut seed);
    recovery_seeds(&mut seed);
    println!("wrote {written} seeds under {}", out.display());
}

/// Parses whitespace-separated hex pairs; `#` starts a comment (as in protocol.md).
fn hex(block: &str) -> Vec<u8> {
    block
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .flat_map(|word| {
            (0..word.len())
                .step_by(2)
                .map(move |i| u8::from_str_radix(&word[i..i + 2], 16).expect("hex digit"))
        })
        .collect()
}

/// The ```` ```hex ```` blocks of protocol.md, with the section each sits in.
fn protocol_examples() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut section = String::from("0");
    let mut in_block = None::<String>;
    for line in PROTOCOL_MD.lines() {
        match &mut in_block {
            Some(block) if line.starts_with("```") => {
                out.push((section.clone(), hex(block)));
                in_block = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if line == "```hex" => in_block = Some(String::new()),
            None => {
                if let Some(title) = line.strip_prefix("### ") {
                    section = title.split_whitespace().next().unwrap_or("0").to_owned();
                }
            }
        }
    }
    out
}

fn frame_seeds(seed: &mut impl FnMut(&str, &str, &[u8])) {
    let decoder = FrameDecoder::new(u32::MAX);
    for (i, (section, bytes)) in protocol_examples().into_iter().enumerate() {
        seed("frame", &format!("protocol-{section}-{i:02}"), &bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut n = 0;
        while let Ok(Some(raw)) = decoder.decode_raw(&mut buf) {
            let mut payload = raw.opcode.to_le_bytes().to_vec();
            payload.extend_from_slice(&raw.payload);
            seed("frame", &format!("payload-{section}-{i:02}-{n}"), &payload);
            n += 1;
        }
    }
}

fn full_properties() -> Properties {
    Properties {
        persistent: true,
        content_type: Some("application/json".into()),
        content_encoding: Some("gzip".into()),
        message_id: Some("m-1".into()),
        correlation_id: Some("c-1".into()),
        reply_to: Some("replies".into()),
        expiration_ms: Some(60_000),
        timestamp_ms: Some(1_700_000_000_000),
        headers: every_header_type(),
        deliver_at_ms: None,
        delay_ms: Some(1_000),
    }
}

fn every_header_type() -> Vec<(String, HeaderValue)> {
    vec![
        ("x-match".into(), "all".into()),
        ("n".into(), HeaderValue::Int(-1)),
        ("ok".into(), true.into()),
        (
            "raw".into(),
            HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
        ),
    ]
}

fn meta_seeds(seed: &mut impl FnMut(&str, &str, &[u8])) {
    let mut tasks = MessageMeta::new("", "tasks");
    tasks.properties.persistent = true;
    let mut mandatory = MessageMeta::new("orders", "eu.new");
    mandatory.mandatory = true;
    let mut ttl = MessageMeta::new("", "q");
    ttl.properties.expiration_ms = Some(300);
    let mut full = MessageMeta::new("orders", "eu.new");
    full.properties = full_properties();
    for (name, meta) in [
        ("protocol-12.3-persistent", tasks),
        ("protocol-12.4-mandatory", mandatory),
        ("ttl-only", ttl),
        ("every-property", full),
    ] {
        seed("meta", name, &meta.to_bytes().expect("meta encodes"));
    }
}

fn header_seeds(seed: &mut impl FnMut(&str, &str, &[u8])) {
    let tables: [(&str, Vec<(String, HeaderValue)>); 3] = [
        ("empty", Vec::new()),
        ("x-match-any", vec![("x-match".into(), "any".into())]),
        ("every-type", every_header_type()),
    ];
    for (name, table) in tables {
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &table).expect("table encodes");
        seed("header", name, &buf);
    }
}

/// A store whose segments hold four small messages each.
fn small_segments() -> StoreConfig {
    let mut config = recovery::config();
    config.log.segment_bytes = 256;
    config.log.relocate_live_fraction = 0.5;
    config
}

fn append(log: &mut QueueLog, n: u64, durable: bool) {
    let mut epoch = None;
    for i in 0..n {
        let body = format!("message {i}");
        let a = log
            .append(&i.to_le_bytes(), body.as_bytes(), 1_700_000_000_000 + i)
            .expect("append");
        epoch = Some(a.epoch);
    }
    if let (true, Some(e)) = (durable, epoch) {
        log.durability().wait_blocking(e);
    }
}

/// The queue directory as a case: every file the format holds, trailing zeros (preallocated
/// space) cut to keep seeds small, with CRC fixing on or off.
fn case_of(data: &Path, uid: u64, clean_stop: bool, fix: bool) -> Case {
    let dir = data.join("queues").join(format!("{uid:016x}"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("queue directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let files = names
        .iter()
        .filter_map(|name| {
            let kind = FileKind::from_file_name(name)?;
            let mut bytes = std::fs::read(dir.join(name)).expect("queue file");
            let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            bytes.truncate(used.next_multiple_of(8).min(bytes.len()));
            Some(CaseFile {
                kind,
                fix_header_crc: fix,
                fix_record_crcs: fix,
                bytes,
            })
        })
        .collect();
    Case {
        uid,
        clean_stop,
        files,
    }
}

/// Runs `scenario` on a fresh store and returns the queue directory as the disk holds it
/// afterwards (while the store is still open: what a crash then leaves).
fn scenario(
    config: StoreConfig,
    scenario: impl FnOnce(&Store, &mut QueueLog),
) -> (tempfile::TempDir, u64) {
    let data = recovery::scratch_dir();
    let store = Store::open(data.path(), config).expect("store");
    let mut log = store.create_queue().expect("queue");
    let uid = log.uid();
    scenario(&store, &mut log);
    (data, uid)
}

fn recovery_seeds(seed: &mut impl FnMut(&str, &str, &[u8])) {
    let mut emit = |name: &str, data: &Path, uid: u64, clean_stop: bool| {
        let fixed = case_of(data, uid, clean_stop, true);
        // The seed must itself pass the target's checks.
        recovery::run(&fixed);
        seed("recovery", name, &fixed.encode());
        let raw = case_of(data, uid, clean_stop, false);
        seed("recovery", &format!("{name}-raw"), &raw.encode());
    };

    let (data, uid) = scenario(recovery::config(), |store, log| {
        append(log, 3, true);
        store.checkpoint();
    });
    emit("one-segment-durable", data.path(), uid, false);

    let (data, uid) = scenario(small_segments(), |store, log| {
        append(log, 12, true);
        for seq in [1, 2, 5, 9] {
            log.ack(seq).expect("ack");
        }
        let e = log.flush().expect("flush");
        log.durability().wait_blocking(e);
        store.checkpoint();
    });
    emit("rotated-with-acks", data.path(), uid, false);

    let (data, uid) = scenario(small_segments(), |store, log| {
        append(log, 5, true);
        store.checkpoint();
        // Written to the page cache, never synced, past the watermark.
        append(log, 6, false);
    });
    emit("unsynced-tail", data.path(), uid, false);

    let (data, uid) = scenario(small_segments(), |store, log| {
        append(log, 12, true);
        for seq in [1, 2, 3, 5, 6, 7] {
            log.ack(seq).expect("ack");
        }
        let e = log.flush().expect("flush");
        log.durability().wait_blocking(e);
        log.compact_now().expect("relocate");
        let e = log.flush().expect("flush");
        log.durability().wait_blocking(e);
        store.checkpoint();
    });
    emit("relocated", data.path(), uid, false);

    let data = recovery::scratch_dir();
    let uid = {
        let store = Store::open(data.path(), small_segments()).expect("store");
        let mut log = store.create_queue().expect("queue");
        append(&mut log, 6, true);
        let uid = log.uid();
        drop(log);
        store.mark_clean_stop().expect("clean stop");
        uid
    };
    emit("clean-stop", data.path(), uid, true);
}
