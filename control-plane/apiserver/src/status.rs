//! Store failures as API errors.

use weft_api::{Resource, Status};

use weft_store::{Failed, StoreError};

/// Maps store failures to API errors. Internal details are logged, not sent.
pub fn store_error(res: &Resource, name: &str, e: StoreError) -> Status {
    match e {
        StoreError::Precondition(Failed::NotFound) => {
            Status::not_found(res.group, res.plural, name)
        }
        StoreError::Precondition(Failed::AlreadyExists) => {
            Status::already_exists(res.group, res.plural, name)
        }
        StoreError::Precondition(Failed::Conflict { .. }) => {
            Status::conflict(res.group, res.plural, name)
        }
        StoreError::NotLeader { leader } => Status::unavailable(format!(
            "this member is not the Raft leader; retry (leader: {})",
            leader.as_deref().unwrap_or("unknown")
        )),
        StoreError::NoQuorum(q) => Status::unavailable(format!(
            "no quorum confirmed this member's leadership; retry ({q})"
        )),
        StoreError::Unavailable(m) => Status::unavailable(format!("{m}; retry")),
        // kube-apiserver's answer when etcd does not reply in time: 504 Timeout.
        StoreError::Uncertain(m) => Status::new(
            504,
            "Timeout",
            format!(
                "the write may or may not have been applied ({m}); \
                 read the object before retrying, or retry with a resourceVersion precondition"
            ),
        ),
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal()
        }
    }
}
