//! Live plugin sessions: a plugin that proved possession of its current
//! key, with the client to reach it. The router reads them before each
//! dispatch; the host adds and ends them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tonic::transport::Channel;

use super::proof::Announcement;
use crate::Did;
use crate::api::proto::plugin_client::PluginClient;

/// One open session.
pub struct Session {
    /// What the plugin proved and announced.
    pub announcement: Announcement,
    /// Its gRPC client (cheap to clone: one HTTP/2 connection).
    pub client: PluginClient<Channel>,
    /// Becomes true when the session ends (crash, exit, shutdown), so
    /// attempts running on it end at once.
    pub ended: tokio::sync::watch::Receiver<bool>,
    /// Distinguishes sessions of one plugin across restarts.
    pub generation: u64,
}

/// The sessions open now, by plugin ID.
#[derive(Default)]
pub struct Sessions {
    map: RwLock<HashMap<Did, Arc<Session>>>,
}

impl Sessions {
    /// The plugin's session, if one is open.
    pub fn get(&self, plugin: &Did) -> Option<Arc<Session>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned()
    }

    /// Opens (or replaces) the plugin's session.
    pub fn open(&self, session: Arc<Session>) {
        let plugin = session.announcement.plugin.clone();
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin, session);
    }

    /// Ends the plugin's session if it is still `generation`.
    pub fn close(&self, plugin: &Did, generation: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.get(plugin).is_some_and(|s| s.generation == generation) {
            map.remove(plugin);
        }
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
