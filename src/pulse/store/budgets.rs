//! Handlers' budgets and what they spent, by the minute.

use super::{
    Budget, Did, Jk, JobError, JobStore, MAX_RACES, WriteBatch, corrupt, record_from_slice,
    record_to_vec, storage,
};

const MINUTE_MS: u64 = 60_000;

impl JobStore {
    /// Sets a handler's budget (`None`: the default for handlers without
    /// their own).
    ///
    /// # Errors
    /// Storage failures.
    pub fn set_budget(&self, handler: Option<&Did>, budget: Budget) -> Result<(), JobError> {
        let key = handler.map_or([0u8; 32], |h| *h.public_key());
        let mut batch = self.batch();
        batch.insert(self.ks(Jk::Budget), key, record_to_vec(&budget));
        self.storage.commit(batch).map_err(storage)
    }

    /// The budget that applies to a handler: its own, else the default,
    /// else none.
    ///
    /// # Errors
    /// Storage failures.
    pub fn budget(&self, handler: &Did) -> Result<Budget, JobError> {
        for key in [*handler.public_key(), [0u8; 32]] {
            if let Some(v) = self.ks(Jk::Budget).get(key).map_err(storage)? {
                return record_from_slice(&v).map_err(|e| corrupt(&format!("budget: {e}")));
            }
        }
        Ok(Budget::default())
    }

    /// The default budget (for handlers without their own).
    ///
    /// # Errors
    /// Storage failures.
    pub fn default_budget(&self) -> Result<Budget, JobError> {
        match self.ks(Jk::Budget).get([0u8; 32]).map_err(storage)? {
            Some(v) => record_from_slice(&v).map_err(|e| corrupt(&format!("budget: {e}"))),
            None => Ok(Budget::default()),
        }
    }

    /// Records cost spent by a handler at `now` (durably).
    ///
    /// # Errors
    /// Storage failures.
    pub fn record_spend(&self, handler: &Did, now: u64, amount: u64) -> Result<(), JobError> {
        let _guard = self.writer();
        let mut races = 0;
        loop {
            let mut batch = self.batch();
            self.stage_spend(&mut batch, handler.public_key(), now, amount)?;
            match self.storage.commit(batch) {
                Err(e) if e.is_conflict() && races < MAX_RACES => races += 1,
                other => return other.map_err(storage),
            }
        }
    }

    /// Adds `amount` to the handler's spend bucket for `now`'s minute in
    /// `batch`. The caller holds the writer lock.
    pub(super) fn stage_spend(
        &self,
        batch: &mut WriteBatch,
        handler: &[u8; 32],
        now: u64,
        amount: u64,
    ) -> Result<(), JobError> {
        let mut key = handler.to_vec();
        key.extend_from_slice(&(now / MINUTE_MS).to_be_bytes());
        let stored = self.ks(Jk::Spend).get(&key).map_err(storage)?;
        // Nodes sharing the store add to the same minute.
        self.expect_unchanged(batch, Jk::Spend, &key, stored.as_deref());
        let before = match stored {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("spend record"))?,
            ),
            None => 0,
        };
        batch.insert(
            self.ks(Jk::Spend),
            key,
            before.saturating_add(amount).to_be_bytes(),
        );
        Ok(())
    }

    /// A handler's spend over the last 60 and 1,440 minutes (minute
    /// buckets, the current one included).
    ///
    /// # Errors
    /// Storage failures.
    pub fn spent(&self, handler: &Did, now: u64) -> Result<(u64, u64), JobError> {
        let minute = now / MINUTE_MS;
        let key = |m: u64| {
            let mut k = handler.public_key().to_vec();
            k.extend_from_slice(&m.to_be_bytes());
            k
        };
        let (mut hour, mut day) = (0u64, 0u64);
        for kv in self
            .ks(Jk::Spend)
            .range(key(minute.saturating_sub(1_439))..=key(minute))
        {
            let (k, v) = kv.map_err(storage)?;
            let m = u64::from_be_bytes(
                k.get(32..40)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("spend key"))?,
            );
            let amount = u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| corrupt("spend record"))?,
            );
            day = day.saturating_add(amount);
            if m + 60 > minute {
                hour = hour.saturating_add(amount);
            }
        }
        Ok((hour, day))
    }
}
