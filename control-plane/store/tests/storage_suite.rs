//! openraft's own storage conformance suite, run against the rocksdb store.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use weft_store::{LogStore, NodeId, StateMachine, TypeConfig, open_storage};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("tempdir");
        let (log, sm) = open_storage(dir.path(), 1000).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("the rocksdb store passes openraft's storage suite");
}
