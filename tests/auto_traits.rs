//! The public types are `Send`/`Sync` where a trading engine needs them to be.

use tickbus::*;

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn send_sync<T: Send + Sync>() {}

#[derive(Clone)]
struct Payload(#[allow(dead_code)] [u64; 8]);

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<Bus>();
    send_sync::<Topic<Payload>>();
    send_sync::<Error>();
    send_sync::<TopicName>();
    send_sync::<Pattern>();
    send_sync::<EventId>();
    send_sync::<InstanceId>();
    send_sync::<Meta>();
    send_sync::<Clock>();
    send_sync::<Event<Payload>>();
    send_sync::<PublishError<Payload>>();
    send_sync::<TryPublishError<Payload>>();
    send_sync::<RecvError>();
    send_sync::<TryRecvError>();
    send_sync::<codec::CodecLimits>();
    send_sync::<recording::ReplayedEvent>();
    send_sync::<Headers>();
    // A subscriber moves to the thread that reads it; it is not shared.
    send::<Subscriber<Payload>>();
    sync::<Subscriber<Payload>>();
    send::<PatternSubscriber>();
    send::<AnyEvent>();
    // Errors box into `Box<dyn Error + Send + Sync>`.
    let _: Box<dyn std::error::Error + Send + Sync> = Box::new(TopicName::new("x").unwrap_err());
}

#[test]
fn the_exclusive_publisher_moves_between_threads() {
    // Send, so the feed handler's thread can own it; not Sync nor Clone (see the
    // compile_fail examples on `Publisher`).
    send::<Publisher<Payload>>();
}
