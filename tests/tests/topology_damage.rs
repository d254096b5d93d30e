//! A topology file whose entries cannot be used is corruption: the broker refuses to start and
//! names the file and the entry, rather than guess (an unknown exchange kind is not `direct`,
//! arguments it cannot decode are not "none").

use std::path::Path;
use std::process::Stdio;

use sluice_client::{Client, ExchangeKind, ExchangeOptions, QueueOptions};
use sluice_tests::broker::{sluice_command, wait_output, within, BrokerProcess};

/// Starts `sluice serve` on `data` and returns its stderr, asserting that it failed to start.
fn start_fails(data: &Path) -> String {
    let child = sluice_command()
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice serve");
    let output = wait_output(child);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "the broker started on a damaged topology:\n{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "it announced a port"
    );
    stderr
}

/// Rewrites the payload of `definitions.bin` (magic, version, length, CRC32, payload) after
/// `damage` changed it, with a valid length and checksum: the file reads, an entry does not.
fn damage_payload(data: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let path = data.join("definitions.bin");
    let bytes = std::fs::read(&path).unwrap();
    let mut payload = bytes[20..].to_vec();
    damage(&mut payload);
    let mut out = bytes[..12].to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    std::fs::write(&path, out).unwrap();
}

/// Bincode's encoding of a string in the topology file: its length as a u64, then its bytes.
fn stored_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

async fn declare_topic_exchange(data: &Path) {
    let broker = BrokerProcess::start(data, &[]);
    let client = within("connect", Client::connect(&broker.url()))
        .await
        .unwrap();
    within(
        "declare",
        client.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::new()),
    )
    .await
    .unwrap();
    within(
        "declare",
        client.declare_queue("tasks", QueueOptions::new()),
    )
    .await
    .unwrap();
    client.close().await.unwrap();
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stored_exchange_kind_stops_the_start_naming_the_file_and_the_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    declare_topic_exchange(&data).await;
    damage_payload(&data, |payload| {
        // The exchange's record: its name, then its kind (2, topic) as one byte.
        let name = stored_str("orders");
        let at = payload
            .windows(name.len())
            .position(|w| w == name.as_slice())
            .expect("the exchange is stored")
            + name.len();
        assert_eq!(payload[at], 2, "topic is stored as 2");
        payload[at] = 9;
    });
    let stderr = start_fails(&data);
    let file = data.join("definitions.bin");
    let expected = format!(
        "{} is damaged: exchange 'orders': unknown exchange kind 9",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_queue_arguments_that_cannot_be_decoded_stop_the_start_naming_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    declare_topic_exchange(&data).await;
    damage_payload(&data, |payload| {
        // The queue's record: name, uid u64, auto_delete u8, then its arguments as bytes
        // (a u64 length, then `present` u16 = 0): claim an argument that is not there.
        let name = stored_str("tasks");
        let at = payload
            .windows(name.len())
            .position(|w| w == name.as_slice())
            .expect("the queue is stored")
            + name.len()
            + 8
            + 1;
        assert_eq!(
            u64::from_le_bytes(payload[at..at + 8].try_into().unwrap()),
            2
        );
        payload[at + 8] = 0x01;
    });
    let stderr = start_fails(&data);
    assert!(
        stderr
            .contains("definitions.bin is damaged: queue 'tasks': its arguments cannot be decoded"),
        "{stderr}"
    );
}
