//! The bus's table of topics and pattern subscriptions. Touched when a topic or a
//! pattern subscription is created and at shutdown; never per event.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use super::pattern::{subscribe_erased, PatternShared, PatternSubscriber};
use super::topic::{Persist, Topic, TopicShared};
use crate::clock::Clock;
use crate::config::{SubscribeOptions, TopicOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{InstanceId, Pattern, TopicName};

/// One topic with its payload type erased.
trait ErasedTopic: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn type_id_of_payload(&self) -> TypeId;
    fn type_name_of_payload(&self) -> &'static str;
    fn close(&self);
    fn is_durable(&self) -> bool;
    fn counts(&self) -> (u64, u64, u64);
    fn subscribe_pattern(&self, pattern: &Arc<PatternShared>) -> Result<()>;
}

/// The registry's entry: the typed shared state behind an `Arc`.
struct Entry<T>(Arc<TopicShared<T>>);

impl<T: Clone + Send + Sync + 'static> ErasedTopic for Entry<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn type_id_of_payload(&self) -> TypeId {
        TypeId::of::<T>()
    }
    fn type_name_of_payload(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn close(&self) {
        self.0.close();
    }
    fn is_durable(&self) -> bool {
        self.0.persist.is_some()
    }
    fn counts(&self) -> (u64, u64, u64) {
        self.0.counts()
    }
    fn subscribe_pattern(&self, pattern: &Arc<PatternShared>) -> Result<()> {
        pattern.add(subscribe_erased(&self.0, pattern.options)?);
        Ok(())
    }
}

#[derive(Default)]
struct Registry {
    closed: bool,
    topics: HashMap<TopicName, Box<dyn ErasedTopic>>,
    patterns: Vec<Weak<PatternShared>>,
}

/// What all clones of one `Bus` share.
pub(crate) struct BusShared {
    pub(crate) instance: InstanceId,
    pub(crate) clock: Clock,
    pub(crate) topic_options: TopicOptions,
    /// The `bus` label of this bus's metrics
    /// ([`BusBuilder::metrics_label`](crate::BusBuilder::metrics_label)).
    #[cfg(feature = "metrics")]
    pub(crate) metrics_label: std::sync::OnceLock<String>,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for BusShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.registry();
        f.debug_struct("Bus")
            .field("instance", &self.instance)
            .field("topics", &registry.topics.len())
            .field("closed", &registry.closed)
            .finish()
    }
}

impl BusShared {
    pub(crate) fn new(instance: InstanceId, clock: Clock, topic_options: TopicOptions) -> Self {
        BusShared {
            instance,
            clock,
            topic_options,
            #[cfg(feature = "metrics")]
            metrics_label: std::sync::OnceLock::new(),
            registry: Mutex::new(Registry::default()),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // No code that can panic runs under this lock with the table half-changed.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_error() -> Error {
        Error::new(ErrorKind::Closed, "the bus has been shut down")
    }

    pub(crate) fn topic<T: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        options: &TopicOptions,
    ) -> Result<Topic<T>> {
        let name = TopicName::new(name)?;
        self.topic_inner(name, options, None)
            .map(|(topic, _)| topic)
    }

    /// The durable topic `name`: created with `persist` if new (then `true`), or the
    /// existing one if it is durable too.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn durable_topic<T: Clone + Send + Sync + 'static>(
        &self,
        name: TopicName,
        options: &TopicOptions,
        persist: Box<dyn Persist<T>>,
    ) -> Result<(Topic<T>, bool)> {
        self.topic_inner(name, options, Some(persist))
    }

    fn topic_inner<T: Clone + Send + Sync + 'static>(
        &self,
        name: TopicName,
        options: &TopicOptions,
        persist: Option<Box<dyn Persist<T>>>,
    ) -> Result<(Topic<T>, bool)> {
        let mut registry = self.registry();
        if registry.closed {
            return Err(Self::closed_error());
        }
        if let Some(existing) = registry.topics.get(&name) {
            if existing.type_id_of_payload() != TypeId::of::<T>() {
                return Err(Error::new(
                    ErrorKind::TopicTypeMismatch,
                    format!(
                        "topic {name} carries {}, not {}",
                        existing.type_name_of_payload(),
                        std::any::type_name::<T>()
                    ),
                ));
            }
            if persist.is_some() && !existing.is_durable() {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "topic {name} already exists on this bus as a local-only topic; \
                         declare it durable before its first use"
                    ),
                ));
            }
            let entry = existing.as_any().downcast_ref::<Entry<T>>();
            return match entry {
                Some(entry) => Ok((
                    Topic {
                        shared: Arc::clone(&entry.0),
                    },
                    false,
                )),
                None => unreachable!("payload type checked above"),
            };
        }
        let shared = Arc::new(TopicShared::new(
            name.clone(),
            options,
            self.instance,
            self.clock.clone(),
            persist,
        )?);
        let entry = Entry(Arc::clone(&shared));
        // Live pattern subscriptions that match get the topic from its first event.
        registry
            .patterns
            .retain(|pattern| pattern.strong_count() > 0);
        for pattern in registry.patterns.iter().filter_map(Weak::upgrade) {
            if pattern.pattern.matches(&name) {
                entry.subscribe_pattern(&pattern)?;
            }
        }
        registry.topics.insert(name, Box::new(entry));
        Ok((Topic { shared }, true))
    }

    pub(crate) fn subscribe_pattern(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<PatternSubscriber> {
        let pattern = Pattern::new(pattern)?;
        let shared = Arc::new(PatternShared::new(pattern, options));
        let mut registry = self.registry();
        if registry.closed {
            return Err(Self::closed_error());
        }
        for (name, topic) in registry.topics.iter() {
            if shared.pattern.matches(name) {
                topic.subscribe_pattern(&shared)?;
            }
        }
        registry.patterns.push(Arc::downgrade(&shared));
        drop(registry);
        Ok(PatternSubscriber::new(shared, Vec::new()))
    }

    pub(crate) fn topic_names(&self) -> Vec<TopicName> {
        let mut names: Vec<_> = self.registry().topics.keys().cloned().collect();
        names.sort();
        names
    }

    /// Each topic's `(published here, received from other instances, missed by
    /// lagging subscribers)`, for metrics (takes the registry lock once).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn topic_counts(&self) -> Vec<(TopicName, (u64, u64, u64))> {
        self.registry()
            .topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.counts()))
            .collect()
    }

    /// Closes every topic: publishing fails from now on; subscribers drain what was
    /// published and then see `Closed`. Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut registry = self.registry();
        if registry.closed {
            return;
        }
        registry.closed = true;
        for topic in registry.topics.values() {
            topic.close();
        }
        for pattern in registry
            .patterns
            .drain(..)
            .filter_map(|weak| weak.upgrade())
        {
            pattern.close();
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.registry().closed
    }
}

impl Drop for BusShared {
    fn drop(&mut self) {
        self.shutdown();
    }
}
