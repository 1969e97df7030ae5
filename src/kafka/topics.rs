//! Topics fleetgate creates and checks: compacted state topics (created if missing, refused
//! when someone made them without compaction), topics whose partition count must follow
//! another's, and the metadata waits a topic created a moment ago needs.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde_json::Value;

use super::{err, Error};

/// An admin client with the connection properties of `kafka`.
pub fn admin_client(
    properties: &serde_json::Map<String, Value>,
) -> Result<AdminClient<DefaultClientContext>, Error> {
    super::connection_config(properties)?
        .create()
        .map_err(err("creating the admin client"))
}

/// The partition count of `topic`, asking again until the metadata shows it (a topic created
/// a moment ago may not be there yet) or `timeout` passes (then None).
pub async fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), timeout)
            .map_err(err("reading topic metadata"))?;
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0);
        if n.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `topic` with `partitions` (`-1`: the broker's default) and `settings` unless it
/// exists; returns true when it was created here.
pub async fn create_if_missing(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
    timeout: Duration,
) -> Result<bool, Error> {
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (k, v) in settings {
        new = new.set(k, v);
    }
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(err("creating a topic"))?;
    match results.into_iter().next() {
        Some(Ok(t)) => {
            tracing::info!(topic = t, partitions, "created topic");
            Ok(true)
        }
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((t, code))) => Err(Error::Topic {
            topic: t,
            problem: format!(
                "could not be created ({code}): create it, or grant this principal CREATE on it"
            ),
        }),
    }
}

/// Makes sure `topic` exists compacted with exactly `partitions` (those of the topic it
/// follows: a vehicle's records of both must share a partition number), creating it if
/// missing. `follows` names the other topic in the error.
pub async fn ensure_copartitioned(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: usize,
    compacted: bool,
    follows: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let settings: &[(&str, &str)] = if compacted {
        &[("cleanup.policy", "compact")]
    } else {
        &[]
    };
    let created = create_if_missing(admin, topic, partitions as i32, settings, timeout).await?;
    if !created && compacted {
        require_compacted(admin, &[topic], timeout).await?;
    }
    let n = partition_count(admin, topic, timeout).await?.unwrap_or(0);
    if n != partitions {
        return Err(Error::Topic {
            topic: topic.to_owned(),
            problem: format!("has {n} partitions but {follows} has {partitions}: a vehicle's records must live in the same partition number of both; recreate it with {partitions} partitions (or add partitions to match)"),
        });
    }
    Ok(())
}

/// Creates `names` if missing — one partition each (changes stay in order), compacted — and
/// fails when one exists without compaction (its state would expire with retention).
pub async fn ensure_compacted(
    properties: &serde_json::Map<String, Value>,
    names: &[&str],
    timeout: Duration,
) -> Result<(), Error> {
    let admin = admin_client(properties)?;
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact"))
        .collect();
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(err("creating the compacted topics"))?;
    // the topics created here are compacted by construction; those that were there are checked
    let mut existing: Vec<&str> = Vec::new();
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created compacted topic"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                existing.extend(names.iter().copied().filter(|n| *n == topic))
            }
            Err((topic, code)) => {
                return Err(Error::Topic {
                    topic,
                    problem: format!("could not be created ({code}): create it with cleanup.policy=compact, or grant this principal CREATE on it"),
                })
            }
        }
    }
    require_compacted(&admin, &existing, timeout).await
}

/// Refuses to go on when one of `names` is not compacted (its records would expire with
/// retention and the state they carry with them). A topic created a moment ago may not show
/// its settings yet (the broker answers DescribeConfigs from metadata that lags the creation):
/// this asks again until every topic shows a `cleanup.policy` or `timeout` passes, and only
/// warns when the broker cannot say.
pub async fn require_compacted(
    admin: &AdminClient<DefaultClientContext>,
    names: &[&str],
    timeout: Duration,
) -> Result<(), Error> {
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<&str> = names.to_vec();
    while !pending.is_empty() {
        let specs: Vec<ResourceSpecifier<'_>> = pending
            .iter()
            .map(|t| ResourceSpecifier::Topic(t))
            .collect();
        let configs = match admin.describe_configs(specs.iter(), &opts).await {
            Ok(configs) => configs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the compacted topics' settings (DescribeConfigs); make sure they are compacted");
                return Ok(());
            }
        };
        let mut unknown = Vec::new();
        for (config, name) in configs.into_iter().zip(pending.iter().copied()) {
            let policy = config
                .ok()
                .and_then(|c| c.get("cleanup.policy").and_then(|e| e.value.clone()))
                .filter(|p| !p.trim().is_empty());
            match policy {
                None => unknown.push(name),
                Some(policy) if policy.split(',').any(|p| p.trim() == "compact") => {}
                Some(policy) => {
                    return Err(Error::Topic {
                        topic: name.to_owned(),
                        problem: format!("has cleanup.policy={policy}: shared state would expire with retention; set cleanup.policy=compact (kafka-configs --alter --entity-type topics --entity-name {name} --add-config cleanup.policy=compact)"),
                    });
                }
            }
        }
        pending = unknown;
        if !pending.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(topics = ?pending, "the broker did not show these topics' cleanup.policy in time; make sure they are compacted");
                return Ok(());
            }
            tracing::debug!(topics = ?pending, "cleanup.policy not shown yet; asking again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
