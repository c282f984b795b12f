//! Async subscribers on tokio: `recv().await`, `Stream`, cancel safety.

use futures::{FutureExt, StreamExt};
use tickbus::{Bus, RecvError, SlowPolicy, SubscribeOptions, TopicOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_subscribers_receive_from_a_publishing_thread() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u64>("position:updated").unwrap();
    let options = SubscribeOptions::with_policy(SlowPolicy::Backpressure);
    let mut first = topic.subscribe_with(options).unwrap();
    let second = topic.subscribe_with(options).unwrap();
    let publisher = std::thread::spawn({
        let topic = topic.clone();
        move || {
            for n in 0..50_000 {
                topic.publish(n).unwrap();
            }
        }
    });
    let by_recv = tokio::spawn(async move {
        let mut sum = 0;
        for expected in 0..50_000u64 {
            let event = first.recv().await.unwrap();
            assert_eq!(event.value, expected);
            sum += event.value;
        }
        sum
    });
    let by_stream = tokio::spawn(async move {
        second
            .take(50_000)
            .map(|event| event.unwrap().value)
            .fold(0, |a, b| async move { a + b })
            .await
    });
    let expected: u64 = (0..50_000).sum();
    assert_eq!(by_recv.await.unwrap(), expected);
    assert_eq!(by_stream.await.unwrap(), expected);
    publisher.join().unwrap();
}

#[tokio::test]
async fn a_stream_reports_lag_as_an_item_and_ends_after_shutdown() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus
        .topic_with::<u32>(
            "md:tick",
            TopicOptions {
                capacity: 4,
                ..Default::default()
            },
        )
        .unwrap();
    let sub = topic.subscribe();
    for n in 0..10 {
        topic.publish(n).unwrap();
    }
    bus.shutdown();
    let items: Vec<_> = sub.collect().await;
    assert_eq!(items[0], Err(RecvError::Lagged(6)));
    let values: Vec<u32> = items[1..]
        .iter()
        .map(|e| e.as_ref().unwrap().value)
        .collect();
    assert_eq!(values, [6, 7, 8, 9]);
}

#[tokio::test]
async fn a_cancelled_recv_loses_nothing() {
    let bus = Bus::builder().build().unwrap();
    let topic = bus.topic::<u32>("order:filled").unwrap();
    let mut sub = topic.subscribe();
    // A recv that is polled once (nothing there: it registers a wake-up) and then
    // dropped...
    assert!(sub.recv().now_or_never().is_none());
    // ...takes nothing: the next event still arrives.
    topic.publish(11).unwrap();
    assert_eq!(sub.recv().await.unwrap().value, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_pattern_subscriber_wakes_for_new_topics() {
    let bus = Bus::builder().build().unwrap();
    let mut sub = bus.subscribe_pattern("trading:>").unwrap();
    let waiter = tokio::spawn(async move {
        let first = sub.recv().await.unwrap();
        let end = sub.recv().await;
        (
            first.topic.to_string(),
            first.downcast::<i64>().unwrap(),
            end,
        )
    });
    tokio::task::yield_now().await;
    bus.topic::<i64>("trading:cycle:step")
        .unwrap()
        .publish(-3)
        .unwrap();
    bus.shutdown();
    let (topic, value, end) = waiter.await.unwrap();
    assert_eq!((topic.as_str(), value), ("trading:cycle:step", -3));
    assert_eq!(end.unwrap_err(), RecvError::Closed);
}
