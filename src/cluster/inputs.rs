//! The partitioned placement's door for inputs other than frames: a manual arrival or a
//! Smartcar state taken by any instance is produced to `{ns}_fleetgate_inputs` keyed by the
//! vehicle's VIN (the same partitioner and partition count as `V`, so it lands in the
//! partition of the vehicle's frames) and applied by the owner of that partition, in its
//! rules transaction ([`super::rules`]). The instance that took the request waits until the
//! vehicle's committed state — read by its cluster view — carries the input's receipt, and
//! answers from it: the same answer embedded mode gives, from whichever instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use super::rules::{default_partition, RulesStatus};
use super::view::ClusterView;
use crate::kafka::{err, Error};
use crate::rules::input::RuleInput;
use crate::runner::{BoxFuture, Placement, SubmitError, Submitted};

/// One record of the inputs topic (key: the VIN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The submitter's id: the receipt in the vehicle's state names it.
    pub id: String,
    /// The input.
    pub input: RuleInput,
}

/// Submits inputs to the owners of their vehicles' partitions.
pub struct InputClient {
    producer: FutureProducer,
    topic: String,
    view: Arc<ClusterView>,
    owned: Arc<RulesStatus>,
    partitions: usize,
}

impl InputClient {
    /// A client producing to `topic` with the `kafka` properties (the partitioner of `V`);
    /// `owned` and `partitions` (of `V`) tell which vehicles' rules run here.
    pub fn new(
        properties: &serde_json::Map<String, serde_json::Value>,
        topic: &str,
        view: Arc<ClusterView>,
        owned: Arc<RulesStatus>,
        partitions: usize,
    ) -> Result<InputClient, Error> {
        let mut config = crate::kafka::client_config(properties)?;
        config.remove("statistics.interval.ms");
        let producer: FutureProducer = config
            .create()
            .map_err(err("creating the inputs producer"))?;
        Ok(InputClient {
            producer,
            topic: topic.to_owned(),
            view,
            owned,
            partitions,
        })
    }
}

impl Placement for InputClient {
    fn submit<'a>(
        &'a self,
        vin: &'a str,
        input: RuleInput,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Submitted, SubmitError>> {
        Box::pin(async move {
            let started = Instant::now();
            let record = InputRecord {
                id: crate::runner::input_id(),
                input,
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            let sent = self
                .producer
                .send(
                    FutureRecord::to(&self.topic).key(vin).payload(&value),
                    rdkafka::util::Timeout::After(wait),
                )
                .await;
            if let Err((e, _)) = sent {
                tracing::warn!(vin, error = %e, "an input for the vehicle's rules was not taken by Kafka");
                return Err(SubmitError::Unavailable(format!(
                    "Kafka did not take the input for the vehicle's rules ({e}); nothing changed: retry (see /healthz/sinks)"
                )));
            }
            let left = wait.saturating_sub(started.elapsed());
            match self.view.receipt(vin, &record.id, left).await {
                Some(receipt) => Ok(Submitted {
                    receipt,
                    delivered: true,
                }),
                None => Err(SubmitError::Pending {
                    input_id: record.id,
                }),
            }
        })
    }

    fn runs_here(&self, key: &str) -> bool {
        let partition = self
            .view
            .partition_of(key)
            .unwrap_or_else(|| default_partition(key, self.partitions));
        self.owned.owned().contains(&partition)
    }
}
