//! Test stores that wrap another: [`delegate_storage!`](crate::delegate_storage) writes the read
//! side ([`raft_core::Storage`]) of a wrapper by handing every call to the wrapped store, so a
//! test writes only what its wrapper changes.

/// Implements [`raft_core::Storage`] for `$wrapper` by calling the same method of its field
/// `$inner`. With `snapshot_chunk: $method`, `snapshot_chunk` calls the wrapper's own
/// `$method(&self, index, term, offset, bytes_max)` instead (a store that damages or splits
/// what it reads back).
///
/// ```
/// struct Counted { inner: raft_storage::MemStorage }
/// raft_testkit::delegate_storage!(Counted => inner);
/// let store = Counted { inner: raft_storage::MemStorage::new(raft_testkit::membership(&[1])) };
/// assert_eq!(raft_core::Storage::last_index(&store), Ok(raft_core::Index(0)));
/// ```
#[macro_export]
macro_rules! delegate_storage {
    ($wrapper:ty => $inner:ident) => {
        $crate::delegate_storage!($wrapper => $inner, snapshot_chunk: __inner_snapshot_chunk);
        impl $wrapper {
            #[allow(dead_code)]
            fn __inner_snapshot_chunk(
                &self,
                index: $crate::__private::raft_core::Index,
                term: $crate::__private::raft_core::Term,
                offset: u64,
                bytes_max: u64,
            ) -> Result<$crate::__private::raft_core::SnapshotChunk, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::snapshot_chunk(&self.$inner, index, term, offset, bytes_max)
            }
        }
    };
    ($wrapper:ty => $inner:ident, snapshot_chunk: $method:ident) => {
        impl $crate::__private::raft_core::Storage for $wrapper {
            fn initial_state(
                &self,
            ) -> Result<$crate::__private::raft_core::InitialState, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::initial_state(&self.$inner)
            }
            fn entries(
                &self,
                low: $crate::__private::raft_core::Index,
                high: $crate::__private::raft_core::Index,
                bytes_max: u64,
            ) -> Result<Vec<$crate::__private::raft_core::Entry>, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::entries(&self.$inner, low, high, bytes_max)
            }
            fn term(
                &self,
                index: $crate::__private::raft_core::Index,
            ) -> Result<$crate::__private::raft_core::Term, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::term(&self.$inner, index)
            }
            fn first_index(
                &self,
            ) -> Result<$crate::__private::raft_core::Index, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::first_index(&self.$inner)
            }
            fn last_index(
                &self,
            ) -> Result<$crate::__private::raft_core::Index, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::last_index(&self.$inner)
            }
            fn snapshot(
                &self,
            ) -> Result<$crate::__private::raft_core::SnapshotMeta, $crate::__private::raft_core::StorageError> {
                $crate::__private::raft_core::Storage::snapshot(&self.$inner)
            }
            fn snapshot_chunk(
                &self,
                index: $crate::__private::raft_core::Index,
                term: $crate::__private::raft_core::Term,
                offset: u64,
                bytes_max: u64,
            ) -> Result<$crate::__private::raft_core::SnapshotChunk, $crate::__private::raft_core::StorageError> {
                self.$method(index, term, offset, bytes_max)
            }
        }
    };
}
