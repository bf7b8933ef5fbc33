//! Cost budgets per handler: rolling hour and day windows. Pure.

use serde::{Deserialize, Serialize};

/// A handler's cost budget; `None` means no limit for that window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// Most cost units in any rolling 60 minutes.
    pub per_hour: Option<u64>,
    /// Most cost units in any rolling 24 hours.
    pub per_day: Option<u64>,
}

/// Where a handler's budget stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetUse {
    /// Spent in the last 60 minutes.
    pub spent_hour: u64,
    /// Spent in the last 24 hours.
    pub spent_day: u64,
    /// Reserved by running attempts and not yet spent.
    pub reserved: u64,
}

impl Budget {
    /// Whether a new reservation of `amount` fits.
    pub fn admits(&self, used: &BudgetUse, amount: u64) -> bool {
        let fits = |limit: Option<u64>, spent: u64| {
            limit.is_none_or(|l| spent.saturating_add(used.reserved).saturating_add(amount) <= l)
        };
        fits(self.per_hour, used.spent_hour) && fits(self.per_day, used.spent_day)
    }

    /// Whether spending has crossed a limit (running attempts are then
    /// cancelled with reason `budget`).
    pub fn exceeded(&self, used: &BudgetUse) -> bool {
        self.per_hour.is_some_and(|l| used.spent_hour > l)
            || self.per_day.is_some_and(|l| used.spent_day > l)
    }

    /// Whether the budget limits anything.
    pub fn is_limited(&self) -> bool {
        self.per_hour.is_some() || self.per_day.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_and_exceeded_follow_both_windows() {
        let b = Budget {
            per_hour: Some(100),
            per_day: Some(150),
        };
        let used = BudgetUse {
            spent_hour: 50,
            spent_day: 120,
            reserved: 10,
        };
        assert!(b.admits(&used, 20));
        assert!(
            !b.admits(&used, 21),
            "the day window binds: 120 + 10 + 21 > 150"
        );
        assert!(!b.exceeded(&used));
        assert!(b.exceeded(&BudgetUse {
            spent_hour: 101,
            ..used
        }));
        assert!(Budget::default().admits(
            &BudgetUse {
                spent_hour: u64::MAX,
                spent_day: u64::MAX,
                reserved: 5
            },
            u64::MAX
        ));
        assert!(!Budget::default().is_limited());
    }
}
