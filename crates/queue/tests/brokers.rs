//! One behaviour, both brokers: the same checks against Redis Streams (a real
//! Redis; `SHOPFAST_TEST_REDIS_URL`, default 127.0.0.1:6379 — required when
//! `CI=true`) and against the embedded broker, the way producers and
//! consumers use them through the `Broker` trait.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use queue::{Broker, Message, Receive};

fn redis_url() -> String {
    std::env::var("SHOPFAST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn redis() -> Option<Arc<dyn Broker>> {
    let url = redis_url();
    let host = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_string();
    if std::net::TcpStream::connect(&host).is_err() {
        assert!(!kit::testing::running_in_ci(), "Redis is required when CI=true ({url})");
        eprintln!("SKIPPED: no Redis at {url}");
        return None;
    }
    Some(Arc::new(queue::redis_streams::RedisStreams::new(&url, 1_000, Duration::from_secs(2)).unwrap()))
}

fn message(key: &str, n: usize) -> Message {
    Message {
        key: key.into(),
        kind: "order.paid".into(),
        payload: format!("{{\"n\":{n}}}"),
        event_id: format!("event-{key}-{n}"),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        published_at_ms: kit_core::time::now_millis(),
    }
}

fn receive<'a>(stream: &'a str, consumer: &'a str, claim_idle: Duration) -> Receive<'a> {
    Receive { stream, group: "g", consumer, max: 10, block: Duration::from_millis(100), claim_idle }
}

async fn a_group_shares_acknowledges_claims_and_dead_letters(broker: Arc<dyn Broker>) {
    let stream = format!("test.{}", uuid::Uuid::now_v7().simple());
    let sent: Vec<Message> = (0..3).map(|n| message("o1", n)).collect();
    let published = broker.publish(&stream, &sent).await.unwrap();
    assert_eq!(published.ids.len(), 3);
    assert!(!published.epoch.is_empty());
    let stats = broker.stats(&stream, "g").await.unwrap();
    assert_eq!((stats.length, stats.lag), (3, 3), "{stats:?}");

    // Two consumers of one group: each entry once, in order, as written.
    let idle = Duration::from_millis(300);
    let mut first = broker.receive(Receive { max: 2, ..receive(&stream, "a", idle) }).await.unwrap();
    let second = broker.receive(receive(&stream, "b", idle)).await.unwrap();
    assert_eq!(first.len() + second.len(), 3);
    first.extend(second.clone());
    assert_eq!(first.iter().map(|d| d.message.clone()).collect::<Vec<_>>(), sent, "the messages as written");
    assert!(first.iter().all(|d| d.deliveries == 1));
    let stats = broker.stats(&stream, "g").await.unwrap();
    assert_eq!((stats.pending, stats.lag), (3, 0), "{stats:?}");

    // "a" acknowledges; "b" dies holding its entry: after the idle time "c" claims it.
    let held: Vec<String> = first[..2].iter().map(|d| d.id.clone()).collect();
    assert_eq!(broker.ack(&stream, "g", &held).await.unwrap(), 2);
    assert_eq!(broker.ack(&stream, "g", &held).await.unwrap(), 0, "acknowledged once");
    let started = Instant::now();
    let claimed = loop {
        let got = broker.receive(receive(&stream, "c", idle)).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never claimed");
    };
    assert!(started.elapsed() >= idle - Duration::from_millis(150), "claimed only after the idle time");
    assert_eq!((claimed[0].id.as_str(), claimed[0].deliveries), (second[0].id.as_str(), 2));

    // A poison message goes to the dead letters, out of the pending list.
    broker.dead_letter(&stream, "g", &claimed[0], "poison").await.unwrap();
    let stats = broker.stats(&stream, "g").await.unwrap();
    assert_eq!((stats.pending, stats.lag, stats.dead_letters), (0, 0, 1), "{stats:?}");
    assert!(broker.receive(receive(&stream, "c", Duration::ZERO)).await.unwrap().is_empty());

    // Lag is counted and aged for what the group has not received.
    broker.publish(&stream, &[message("o2", 9)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = broker.stats(&stream, "g").await.unwrap();
    assert_eq!(stats.lag, 1, "{stats:?}");
    assert!(stats.lag_ms >= 40, "{stats:?}");
    assert_eq!(stats.epoch, published.epoch, "nothing was lost");
}

async fn garbage_is_refused_not_half_done(broker: Arc<dyn Broker>) {
    let err = broker.publish("has space", &[message("o", 0)]).await;
    let embedded = broker.kind() == "embedded";
    if embedded {
        assert!(matches!(err, Err(queue::QueueError::Refused(_))), "{err:?}");
        let bad = broker.receive(Receive { max: 0, ..receive("s", "c", Duration::ZERO) }).await;
        assert!(matches!(bad, Err(queue::QueueError::Refused(_))), "{bad:?}");
    }
    // Acknowledging what was never delivered changes nothing.
    let stream = format!("test.{}", uuid::Uuid::now_v7().simple());
    broker.publish(&stream, &[message("o", 1)]).await.unwrap();
    broker.receive(receive(&stream, "c", Duration::from_secs(60))).await.unwrap();
    assert_eq!(broker.ack(&stream, "g", &["0-1".into()]).await.unwrap(), 0);
    assert_eq!(broker.stats(&stream, "g").await.unwrap().pending, 1);
}

#[tokio::test]
async fn redis_streams_share_acknowledge_claim_and_dead_letter() {
    let Some(broker) = redis() else { return };
    a_group_shares_acknowledges_claims_and_dead_letters(broker.clone()).await;
    garbage_is_refused_not_half_done(broker).await;
}

#[tokio::test]
async fn the_embedded_broker_does_the_same() {
    let broker: Arc<dyn Broker> = Arc::new(queue::memory::Embedded::new(1_000));
    a_group_shares_acknowledges_claims_and_dead_letters(broker.clone()).await;
    garbage_is_refused_not_half_done(broker).await;
}

#[tokio::test]
async fn the_embedded_broker_over_grpc_does_the_same() {
    let shutdown = kit::shutdown::CancellationToken::new();
    let db = kit::testing::TestDb::sqlite();
    let config = queue::QueueServiceConfig { common: kit::testing::service_common(&db.url), max_length: 1_000 };
    let service = queue::service::start(config, shutdown.clone()).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(service.grpc_url()).unwrap().connect_lazy();
    let broker: Arc<dyn Broker> =
        Arc::new(queue::grpc::GrpcBroker::new(queue::grpc::channel(channel), Duration::from_secs(2)));
    a_group_shares_acknowledges_claims_and_dead_letters(broker.clone()).await;
    garbage_is_refused_not_half_done(broker).await;
    shutdown.cancel();
}

/// The gRPC surface refuses garbage with the field named, and the broker
/// behind it is left as it was.
#[tokio::test]
async fn the_grpc_surface_refuses_garbage_with_the_field_named() {
    use contracts::queue::v1 as pb;
    let shutdown = kit::shutdown::CancellationToken::new();
    let db = kit::testing::TestDb::sqlite();
    let config = queue::QueueServiceConfig { common: kit::testing::service_common(&db.url), max_length: 1_000 };
    let service = queue::service::start(config, shutdown.clone()).await.unwrap();
    let mut client = pb::queue_service_client::QueueServiceClient::connect(service.grpc_url()).await.unwrap();
    let good = pb::Message {
        key: "o".into(),
        kind: "order.paid".into(),
        payload: "{}".into(),
        event_id: "e".into(),
        ..Default::default()
    };
    let publish =
        |stream: &str, message: pb::Message| pb::PublishRequest { stream: stream.into(), messages: vec![message] };
    let refused = [
        ("stream", client.publish(publish("", good.clone())).await.map(|_| ())),
        ("key", client.publish(publish("s", pb::Message { key: String::new(), ..good.clone() })).await.map(|_| ())),
        (
            "event_id",
            client.publish(publish("s", pb::Message { event_id: String::new(), ..good.clone() })).await.map(|_| ()),
        ),
        (
            "payload",
            client.publish(publish("s", pb::Message { payload: "x".repeat(70_000), ..good.clone() })).await.map(|_| ()),
        ),
        (
            "block_ms",
            client
                .receive(pb::ReceiveRequest {
                    stream: "s".into(),
                    group: "g".into(),
                    consumer: "c".into(),
                    max: 1,
                    block_ms: 60_000,
                    claim_idle_ms: 1_000,
                })
                .await
                .map(|_| ()),
        ),
        (
            "consumer",
            client
                .receive(pb::ReceiveRequest {
                    stream: "s".into(),
                    group: "g".into(),
                    consumer: "a b".into(),
                    max: 1,
                    block_ms: 0,
                    claim_idle_ms: 1_000,
                })
                .await
                .map(|_| ()),
        ),
        (
            "group",
            client.ack(pb::AckRequest { stream: "s".into(), group: String::new(), ids: vec![] }).await.map(|_| ()),
        ),
        (
            "entry ids",
            client
                .ack(pb::AckRequest { stream: "s".into(), group: "g".into(), ids: vec![String::new()] })
                .await
                .map(|_| ()),
        ),
        ("group", client.stats(pb::StatsRequest { stream: "s".into(), group: "\n".into() }).await.map(|_| ())),
        (
            "reason",
            client
                .dead_letter(pb::DeadLetterRequest {
                    stream: "s".into(),
                    group: "g".into(),
                    delivery: None,
                    reason: "x".repeat(2_000),
                })
                .await
                .map(|_| ()),
        ),
        (
            "delivery",
            client
                .dead_letter(pb::DeadLetterRequest {
                    stream: "s".into(),
                    group: "g".into(),
                    delivery: None,
                    reason: "r".into(),
                })
                .await
                .map(|_| ()),
        ),
    ];
    for (field, result) in refused {
        let status = result.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    // Nothing of it reached the broker: no stream was made.
    let stats = client.stats(pb::StatsRequest { stream: "s".into(), group: "g".into() }).await.unwrap().into_inner();
    assert_eq!((stats.length, stats.pending), (0, 0), "{stats:?}");
    shutdown.cancel();
}

/// A Redis that lost everything (here: the stream and the epoch key deleted,
/// as a restart without persistence leaves it): a new epoch, and the group is
/// made again on the next receive.
#[tokio::test]
async fn a_redis_that_lost_its_data_shows_a_new_epoch_and_serves_again() {
    let Some(broker) = redis() else { return };
    let stream = format!("test.{}", uuid::Uuid::now_v7().simple());
    let before = broker.publish(&stream, &[message("o", 1)]).await.unwrap().epoch;
    broker.receive(receive(&stream, "c", Duration::from_secs(60))).await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:epoch")).query_async(&mut conn).await.unwrap();
    let after = broker.stats(&stream, "g").await.unwrap();
    assert_ne!(after.epoch, before, "a new epoch tells producers to publish again");
    broker.publish(&stream, &[message("o", 2)]).await.unwrap();
    let got = broker.receive(receive(&stream, "c", Duration::from_secs(60))).await.unwrap();
    assert_eq!(got.len(), 1, "the group was made again");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{stream}:epoch"))
        .arg(format!("{stream}:dead"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
