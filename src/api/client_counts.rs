//! A count held per client (connections, calls, bytes), bounded per
//! client, for the limits of spec/security.md that are "at most N per
//! client at once".

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Counts by client; a client whose count drops to zero is forgotten, so
/// the map holds only clients that hold something.
#[derive(Debug, Default)]
pub(crate) struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

impl ClientCounts {
    /// Adds `n` to `client`'s count if that keeps it at most `max`.
    pub(crate) fn try_add(&self, client: IpAddr, n: usize, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held = m.entry(client).or_insert(0);
        if held.saturating_add(n) > max {
            if *held == 0 {
                m.remove(&client);
            }
            return false;
        }
        *held += n;
        true
    }

    /// Gives back `n` of `client`'s count.
    pub(crate) fn sub(&self, client: IpAddr, n: usize) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = m.get_mut(&client) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                m.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_per_client_and_forgotten_at_zero() {
        let c = ClientCounts::default();
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        assert!(c.try_add(a, 2, 3));
        assert!(!c.try_add(a, 2, 3));
        assert!(c.try_add(b, 3, 3));
        assert!(!c.try_add(b, 1, 3));
        c.sub(a, 2);
        c.sub(b, 3);
        assert!(c.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
        assert!(!c.try_add(a, 4, 3));
        assert!(c.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    }
}
