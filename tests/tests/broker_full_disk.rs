//! The real broker on a real full disk (a small tmpfs): every topology change and publish
//! made while the disk is full either completes durably or fails with a typed error and leaves
//! nothing behind; the broker keeps serving; after a crash and a restart every confirmed
//! message is there. Needs root to mount the tmpfs (as CI has).

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use sluice_client::{
    Client, DeleteQueueOptions, ErrorCode, ExchangeKind, ExchangeOptions, PublishOptions,
    QueueOptions,
};
use sluice_tests::broker::BrokerProcess;
use sluice_tests::tmpfs::Tmpfs;

/// Small segments, so a queue runs out of reserved blocks soon after the disk fills; no
/// free-space threshold, so the disk really fills instead of publishers being blocked first.
const FLAGS: &[&str] = &["--segment-bytes", "262144", "--min-free-disk-bytes", "0"];

use sluice_tests::broker::within;

async fn connect(broker: &BrokerProcess) -> Client {
    within("connect", Client::connect(&broker.url()))
        .await
        .expect("connect")
}

fn body(queue: &str, id: u64) -> Bytes {
    Bytes::from(format!("{queue}:{id}:{}", "p".repeat(900)))
}

fn id_of(body: &[u8]) -> u64 {
    let text = std::str::from_utf8(body).expect("utf-8 body");
    text.split(':').nth(1).unwrap().parse().unwrap()
}

/// Publishes `ids` to `queue` one at a time; returns the confirmed ids and the code of the
/// first refusal, after which it stops.
async fn publish_ids(
    client: &Client,
    queue: &str,
    ids: impl Iterator<Item = u64>,
) -> (BTreeSet<u64>, Option<ErrorCode>) {
    let mut confirmed = BTreeSet::new();
    let options = PublishOptions::new();
    for id in ids {
        let sent = client.publish("", queue, body(queue, id), &options);
        match within("a publish", sent).await {
            Ok(_) => {
                confirmed.insert(id);
            }
            Err(e) => return (confirmed, Some(e.code().expect("a typed refusal"))),
        }
    }
    (confirmed, None)
}

/// Every message of `queue`, taken with `get` and acked; their ids.
async fn drain(client: &Client, queue: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    while let Some(m) = within("a get", client.get(queue)).await.expect("get") {
        assert!(ids.insert(id_of(&m.body)), "a message came twice");
        m.ack().await.expect("ack");
    }
    ids
}

fn code_of<T: std::fmt::Debug>(result: sluice_client::Result<T>) -> ErrorCode {
    result
        .expect_err("refused while the disk is full")
        .code()
        .expect("a typed error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_changes_cleanly_and_a_restart_finds_every_confirmed_message() {
    let disk = Tmpfs::mount("24m");
    let data = disk.path().join("data");
    let filler = disk.path().join("filler");
    let broker = BrokerProcess::start(&data, FLAGS);
    let client = connect(&broker).await;
    for q in ["kept", "purged", "doomed"] {
        client.declare_queue(q, QueueOptions::new()).await.unwrap();
    }
    let (mut kept, refused) = publish_ids(&client, "kept", 0..100).await;
    assert_eq!(refused, None);
    let (doomed, _) = publish_ids(&client, "doomed", 0..50).await;
    let (purged, _) = publish_ids(&client, "purged", 0..50).await;
    assert_eq!((doomed.len(), purged.len()), (50, 50));

    assert!(disk.fill(&filler) > 0);

    // Declares fail with STORAGE_FULL, again on a retry, and leave no queue behind.
    for _ in 0..2 {
        let late = client.declare_queue("late", QueueOptions::new()).await;
        assert_eq!(code_of(late), ErrorCode::StorageFull);
    }
    let passive = client.declare_queue("late", QueueOptions::passive()).await;
    assert_eq!(code_of(passive), ErrorCode::NotFound);
    let declared = client
        .declare_exchange("late-x", ExchangeKind::Topic, ExchangeOptions::new())
        .await;
    assert_eq!(code_of(declared), ErrorCode::StorageFull);
    let bound = client.bind("kept", "amq.topic", "late.#", Vec::new()).await;
    assert_eq!(code_of(bound), ErrorCode::StorageFull);

    // Publishing goes on into the space the queue reserved, then is refused, typed.
    let (more, refused) = publish_ids(&client, "kept", 100..2_000).await;
    assert_eq!(refused, Some(ErrorCode::StorageFull), "the disk ran out");
    kept.extend(more);

    // Purge and delete either complete or fail cleanly; the broker answers both.
    let purge = within("purge", client.purge_queue("purged")).await;
    let delete = within(
        "delete",
        client.delete_queue("doomed", DeleteQueueOptions::default()),
    )
    .await;
    if let Err(e) = &delete {
        assert_eq!(e.code(), Some(ErrorCode::StorageFull), "{e}");
    }

    // Space comes back: the declare that failed now works, and its messages are confirmed.
    std::fs::remove_file(&filler).unwrap();
    client
        .declare_queue("late", QueueOptions::new())
        .await
        .unwrap();
    let (late, refused) = publish_ids(&client, "late", 0..20).await;
    assert_eq!((late.len(), refused), (20, None));
    drop(client);
    broker.kill9();

    let broker = BrokerProcess::start(&data, FLAGS);
    let client = connect(&broker).await;
    assert_eq!(
        drain(&client, "kept").await,
        kept,
        "every confirmed message, no other"
    );
    assert_eq!(drain(&client, "late").await, late);
    match delete {
        Ok(_) => {
            let gone = client
                .declare_queue("doomed", QueueOptions::passive())
                .await;
            assert_eq!(code_of(gone), ErrorCode::NotFound);
        }
        Err(_) => assert_eq!(drain(&client, "doomed").await, doomed),
    }
    let left = drain(&client, "purged").await;
    match purge {
        // A purge's acks are lazy: a crash may bring some back (at-least-once), never others.
        Ok(_) => assert!(left.is_subset(&purged)),
        Err(e) => panic!("purge on a full disk failed: {e}"),
    }
    let passive = ExchangeOptions::new().passive(true);
    let x = client
        .declare_exchange("late-x", ExchangeKind::Topic, passive)
        .await;
    assert_eq!(code_of(x), ErrorCode::NotFound, "the refused exchange");
    let bindings = client.list_bindings().await.unwrap();
    assert!(
        bindings.iter().all(|b| b.routing_key != "late.#"),
        "the refused binding: {bindings:?}"
    );
    broker.stop();
}

/// Deleting a queue is what an operator does to free space: a deletion that is answered is
/// recorded, and the broker starts again afterwards whatever the disk did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_queues_on_a_full_disk_never_keeps_the_broker_from_starting() {
    let disk = Tmpfs::mount("16m");
    let data = disk.path().join("data");
    let broker = BrokerProcess::start(&data, FLAGS);
    let client = connect(&broker).await;
    let names: Vec<String> = (0..8).map(|i| format!("q{i}")).collect();
    for name in &names {
        client
            .declare_queue(name, QueueOptions::new())
            .await
            .unwrap();
        let (ok, _) = publish_ids(&client, name, 0..10).await;
        assert_eq!(ok.len(), 10);
    }
    // Full again before every deletion: the first is recorded with the space held in reserve
    // for topology writes; the others either find the space the previous one freed or fail.
    let mut fillers = Vec::new();
    let mut deleted = Vec::new();
    for name in &names {
        let filler = disk.path().join(format!("filler-{name}"));
        disk.fill(&filler);
        fillers.push(filler);
        match client
            .delete_queue(name, DeleteQueueOptions::default())
            .await
        {
            Ok(n) => {
                assert_eq!(n, 10);
                deleted.push(name.clone());
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::StorageFull), "{e}"),
        }
    }
    assert!(
        deleted.contains(&names[0]),
        "the first deletion on a full disk succeeds"
    );
    drop(client);
    broker.kill9();
    for filler in fillers {
        std::fs::remove_file(filler).unwrap();
    }

    let broker = BrokerProcess::start(&data, FLAGS);
    let client = connect(&broker).await;
    for name in &names {
        let found = client.declare_queue(name, QueueOptions::passive()).await;
        if deleted.contains(name) {
            assert_eq!(code_of(found), ErrorCode::NotFound, "{name} was deleted");
        } else {
            assert_eq!(
                drain(&client, name).await.len(),
                10,
                "{name} kept its messages"
            );
        }
    }
    broker.stop();
}

/// A queue directory removed behind the broker's back (or by an older version that deleted
/// it before recording the deletion) is reported and skipped at start, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_directory_is_gone_is_skipped_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let broker = BrokerProcess::start(data, &[]);
    let client = connect(&broker).await;
    for q in ["lost", "kept"] {
        client.declare_queue(q, QueueOptions::new()).await.unwrap();
        client.bind(q, "amq.fanout", "", Vec::new()).await.unwrap();
    }
    let (kept, _) = publish_ids(&client, "kept", 0..5).await;
    drop(client);
    broker.stop();
    remove_queue_dir_without(data, b"kept:");

    let broker = BrokerProcess::start(data, &[]);
    let client = connect(&broker).await;
    let lost = client.declare_queue("lost", QueueOptions::passive()).await;
    assert_eq!(code_of(lost), ErrorCode::NotFound);
    assert_eq!(drain(&client, "kept").await, kept);
    let (_, refused) = publish_ids(&client, "kept", 5..6).await;
    assert_eq!(refused, None);
    let log = broker.log();
    assert!(
        log.contains("directory is gone"),
        "the skip is reported: {log}"
    );
    broker.stop();
}

/// Removes the one queue directory whose files do not hold `needle` (the other queue's
/// messages): the queues are named by random ids on disk, so it is found by elimination.
fn remove_queue_dir_without(data: &Path, needle: &[u8]) {
    let queues = data.join("queues");
    let mut dirs: Vec<_> = std::fs::read_dir(&queues)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let others: Vec<_> = dirs.iter().filter(|d| !dir_holds(d, needle)).collect();
    assert_eq!(others.len(), 1, "exactly one other queue: {dirs:?}");
    std::fs::remove_dir_all(others[0]).unwrap();
}

fn dir_holds(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

/// How a publisher learnt that it may not publish.
enum Stopped {
    /// A message was refused.
    Refused(sluice_client::Error),
    /// The client got `Blocked` and holds its next messages.
    Blocked,
}

/// Resolves once `client` has been told that publishing is blocked, within the test's wait.
/// The client exposes the state, not an event, so this looks every few milliseconds.
async fn blocked(client: &Client) {
    within("Blocked", async {
        while !client.is_blocked() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Free bytes of the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// The free-space threshold holds at full publishing speed: publishers are blocked before the
/// disk is actually full, not a second of publishing later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_blocked_near_the_threshold_even_at_full_speed() {
    const MIN_FREE: u64 = 24 << 20;
    let disk = Tmpfs::mount("64m");
    let data = disk.path().join("data");
    let min_free = MIN_FREE.to_string();
    let flags = [
        "--segment-bytes",
        "1048576",
        "--min-free-disk-bytes",
        &min_free,
    ];
    let broker = BrokerProcess::start(&data, &flags);
    let client = connect(&broker).await;
    client
        .declare_queue("fast", QueueOptions::new())
        .await
        .unwrap();
    let publisher = client.publisher_with_window(256);
    let options = PublishOptions::new();
    let payload = Bytes::from(vec![7u8; 16 << 10]);
    let mut confirms = futures_util::stream::FuturesUnordered::new();
    // Publishing stops one of two ways, by a race the test cannot steer: messages the broker
    // reads once it is blocked are refused with STORAGE_FULL, and messages the client has not
    // written yet when `Blocked` arrives are held by the client (protocol.md §5.6), so no
    // answer comes for them until the broker unblocks.
    let mut stopped = None;
    // At most twice the disk's size: the broker must refuse long before.
    for _ in 0..(2 * 64 * 64) {
        let sent = publisher.publish("", "fast", payload.clone(), &options);
        confirms.push(within("a publish", sent).await.expect("sent"));
        if confirms.len() >= 256 {
            let next = futures_util::StreamExt::next(&mut confirms);
            let outcome = tokio::select! {
                answer = next => match answer {
                    Some(Err(e)) => Some(Stopped::Refused(e)),
                    _ => None,
                },
                () = blocked(&client) => Some(Stopped::Blocked),
            };
            if outcome.is_some() {
                stopped = outcome;
                break;
            }
        }
    }
    match stopped.expect("publishing was stopped before the disk filled") {
        Stopped::Refused(refusal) => {
            assert_eq!(refusal.code(), Some(ErrorCode::StorageFull), "{refusal}")
        }
        Stopped::Blocked => assert!(client.is_blocked()),
    }
    let free = free_bytes(disk.path());
    assert!(
        free >= MIN_FREE / 2,
        "the broker ran {} MiB past its {} MiB threshold",
        (MIN_FREE - free.min(MIN_FREE)) >> 20,
        MIN_FREE >> 20
    );
    drop(confirms);
    drop(client);
    broker.stop();
}
