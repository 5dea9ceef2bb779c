//! A store's directory is held exclusively while the store is open: a second opener, in this
//! process or another, gets `DiskError::InUse` before it reads or repairs anything.

use std::path::PathBuf;

use raft_core::{GroupId, Membership, NodeId};
use raft_storage::{DiskError, DiskOptions, DiskStorage, Identity, LOCK_FILE, SharedWal, StdFs, WalOptions};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("raft-storage-lock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const IDENTITY: Identity = Identity { cluster_id: 1, node_id: NodeId(1) };

#[test]
fn a_disk_store_in_use_is_refused_until_it_is_dropped() -> Result<(), DiskError> {
    let dir = temp_dir("disk");
    let store = DiskStorage::create(StdFs, &dir, IDENTITY, Membership::new([NodeId(1)]), DiskOptions::default())?;
    assert!(dir.join(LOCK_FILE).exists());
    let second = DiskStorage::open(StdFs, &dir, IDENTITY, DiskOptions::default());
    assert_eq!(second.err(), Some(DiskError::InUse(dir.clone())));
    let again = DiskStorage::create(StdFs, &dir, IDENTITY, Membership::new([NodeId(1)]), DiskOptions::default());
    assert_eq!(again.err(), Some(DiskError::InUse(dir.clone())), "in use comes before 'already exists'");
    drop(store);
    let reopened = DiskStorage::open(StdFs, &dir, IDENTITY, DiskOptions::default())?;
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_shared_log_in_use_is_refused_until_it_is_dropped() -> Result<(), DiskError> {
    let dir = temp_dir("shared");
    let wal = SharedWal::create(StdFs, &dir, IDENTITY, WalOptions::default())?;
    let group = wal.create_group(GroupId(3), Membership::new([NodeId(1)]))?;
    assert_eq!(
        SharedWal::open(StdFs, &dir, IDENTITY, WalOptions::default()).err(),
        Some(DiskError::InUse(dir.clone()))
    );
    // A group store keeps the log open (and held) after the log's own handle is dropped.
    drop(wal);
    assert_eq!(
        SharedWal::open(StdFs, &dir, IDENTITY, WalOptions::default()).err(),
        Some(DiskError::InUse(dir.clone()))
    );
    drop(group);
    let reopened = SharedWal::open(StdFs, &dir, IDENTITY, WalOptions::default())?;
    assert_eq!(reopened.groups(), vec![GroupId(3)]);
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_missing_store_is_not_created_by_open_and_a_failed_open_holds_nothing() -> Result<(), DiskError> {
    let dir = temp_dir("missing");
    let missing = DiskStorage::open(StdFs, &dir, IDENTITY, DiskOptions::default());
    assert_eq!(missing.err(), Some(DiskError::NotInitialized(dir.clone())));
    assert!(!dir.exists(), "open creates no directory");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let empty = DiskStorage::open(StdFs, &dir, IDENTITY, DiskOptions::default());
    assert_eq!(empty.err(), Some(DiskError::NotInitialized(dir.clone())));
    // The failed open released its hold: creating the store now works.
    let created = DiskStorage::create(StdFs, &dir, IDENTITY, Membership::new([NodeId(1)]), DiskOptions::default())?;
    drop(created);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
