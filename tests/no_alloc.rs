//! In-process delivery does not allocate per event: publish, `try_recv` of a plain
//! struct and `try_recv_ref` run with a counting global allocator that must stay
//! at zero. (A test binary of its own, so the allocator sees only this test.)
//!
//! Only the test's own thread is counted, the thread that publishes and
//! receives: counting every thread, the test once saw 4 allocations in a full
//! run on a loaded machine (and none alone), from a thread that is not part of
//! in-process delivery (the embedded bus starts none that is).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

thread_local! {
    /// Set on the test's thread while the hot path runs.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn counting(on: bool) {
    COUNTING.with(|counting| counting.set(on));
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: a thread being torn down has no flag (and is not counted).
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Quote {
    bid: f64,
    ask: f64,
    size: [u64; 6],
}

#[test]
fn publish_and_receive_do_not_allocate() {
    let bus = tickbus::Bus::builder().build().unwrap();
    let quotes = bus.topic::<Quote>("md:quote").unwrap();
    let mut by_value = quotes.subscribe();
    let mut by_ref = quotes.subscribe();
    let mut all = bus.subscribe_pattern("md:>").unwrap();
    // Warm up: the wake-up list of a topic is created on first use.
    quotes
        .publish(Quote {
            bid: 0.0,
            ask: 0.0,
            size: [0; 6],
        })
        .unwrap();
    by_value.try_recv().unwrap();
    by_ref.try_recv_ref().unwrap();
    all.try_recv_with(|_| ()).unwrap();
    // The exclusive publisher and the batch receive.
    let options = tickbus::TopicOptions {
        exclusive_publisher: true,
        ..Default::default()
    };
    let book = bus.topic_with::<Quote>("book:btc", options).unwrap();
    let mut batch = book.subscribe();
    let mut publisher = book.publisher().unwrap();
    publisher
        .publish(Quote {
            bid: 0.0,
            ask: 0.0,
            size: [0; 6],
        })
        .unwrap();
    batch.recv_batch(8, |_| ()).unwrap();

    counting(true);
    for n in 0..10_000u64 {
        let quote = Quote {
            bid: n as f64,
            ask: n as f64 + 0.5,
            size: [n; 6],
        };
        quotes.publish(quote).unwrap();
        let event = by_value.try_recv().unwrap();
        assert_eq!(event.value, quote);
        // Reading the id (derived from the sequence) and timestamp does not allocate.
        assert_eq!(event.meta.id().as_uuid().get_version_num(), 7);
        assert!(event.meta.timestamp_ns() > 0);
        assert_eq!(*by_ref.try_recv_ref().unwrap(), quote);
        let bid = all
            .try_recv_with(|event| event.downcast_ref::<Quote>().map(|q| q.bid))
            .unwrap();
        assert_eq!(bid, Some(n as f64));
        publisher.publish(quote).unwrap();
        publisher.publish_batch([quote, quote]).unwrap();
        let mut handled = 0;
        batch
            .recv_batch(8, |event| {
                assert_eq!(*event, quote);
                assert!(event.meta().timestamp_ns() > 0);
                handled += 1;
            })
            .unwrap();
        assert_eq!(handled, 3);
    }
    counting(false);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "allocations on the hot path"
    );
}
