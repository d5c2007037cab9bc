//! A recording fake of the agent's API effects, for unit tests of the pod
//! loop and the status queue in paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use weft_api::k8s_openapi::api::core::v1::Pod;

use super::effects::AgentApi;
use super::state::PodKey;
use crate::env;
use crate::workload::{Report, WorkloadError};

/// Every effect, in the order it ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Call {
    Status(String, Value),
    Event(String, String),
    FinishDeletion(String),
}

#[derive(Default)]
pub(super) struct RecordingApi {
    pub calls: Mutex<Vec<Call>>,
    /// How long each status write takes.
    pub write_time: Duration,
}

impl RecordingApi {
    pub fn statuses(&self, pod: &str) -> Vec<Value> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Status(p, v) if p == pod => Some(v.clone()),
                _ => None,
            })
            .collect()
    }
}

impl AgentApi for RecordingApi {
    async fn patch_status(&self, key: &PodKey, status: &Value) {
        tokio::time::sleep(self.write_time).await;
        let call = Call::Status(key.name.clone(), status.clone());
        self.calls.lock().unwrap().push(call);
    }

    async fn event(&self, key: &PodKey, _warning: bool, reason: &str, _message: &str) {
        let call = Call::Event(key.name.clone(), reason.to_string());
        self.calls.lock().unwrap().push(call);
    }

    async fn current(&self, _key: &PodKey) -> Option<Pod> {
        None
    }

    async fn finish_deletion(&self, key: &PodKey) {
        let call = Call::FinishDeletion(key.name.clone());
        self.calls.lock().unwrap().push(call);
    }

    async fn sources(&self, _pod: &Pod) -> Result<env::Fetched, WorkloadError> {
        Ok(env::Fetched::default())
    }

    async fn runtime_handler(&self, class: &str) -> Result<String, WorkloadError> {
        Ok(class.to_string())
    }

    fn reporter(&self, _pod: &Pod) -> Report {
        Arc::new(|_| {})
    }
}
