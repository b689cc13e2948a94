//! The mesh index in force now, swapped whole when the agent sends a new state.

use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use shunt_mesh::index::{Error, MeshIndex};
use shunt_mesh::model::MeshState;
use shunt_mesh::routing;

/// The current [`MeshIndex`], swapped whole when the agent sends a new state.
#[derive(Debug)]
pub struct StateStore {
    current: RwLock<Arc<MeshIndex>>,
    /// Moves on every swap: open connections that must follow the policies watch it
    /// (`crate::authz::watch`).
    changes: watch::Sender<u64>,
}

impl Default for StateStore {
    fn default() -> Self {
        Self {
            current: RwLock::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl StateStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The index connections should use now.
    #[must_use]
    pub fn load(&self) -> Arc<MeshIndex> {
        // The lock only guards an Arc swap, which cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the state; returns the problems found in it.
    pub fn replace(&self, state: &MeshState) -> Vec<Error> {
        let (index, errors) = MeshIndex::build(state);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        self.changes.send_modify(|generation| *generation += 1);
        errors
    }

    /// Wakes on each later [`StateStore::replace`].
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl routing::RouteSource for StateStore {
    fn routes(&self) -> Arc<dyn routing::Routes> {
        self.load()
    }
}
