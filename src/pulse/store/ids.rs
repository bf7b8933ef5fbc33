//! Job IDs as the store hands them out (spec/pulse.md, "Job ID").

use super::JobId;

/// Hands out job IDs (spec/pulse.md, "Job ID"): `time ‖ sequence (u32 BE)
/// ‖ random (u32)`. IDs never go backwards: a clock that steps back (or a
/// restart onto an earlier clock) continues from the newest ID the store
/// holds, with the next sequence number; the random part keeps IDs apart
/// even from jobs already pruned.
pub(in crate::pulse) struct IdSource {
    /// Time part of the last ID given (or the newest stored).
    last_ms: u64,
    /// Sequence part of the last ID given.
    seq: u32,
    /// xorshift64 state, seeded from the OS.
    random: u64,
}

impl IdSource {
    /// Continues after `newest`, the largest stored job ID, if any.
    pub(super) fn after(newest: Option<JobId>) -> IdSource {
        let mut seed = [0u8; 8];
        // Without OS randomness the IDs stay unique (time and sequence do
        // that); the random part only guards against reuse of pruned IDs.
        let _ = getrandom::fill(&mut seed);
        let (last_ms, seq) = newest.map_or((0, 0), |id| {
            let tail = u64::from_be_bytes(id.0[8..].try_into().unwrap_or([0; 8]));
            (id.created_at_ms(), (tail >> 32) as u32)
        });
        IdSource {
            last_ms,
            seq,
            random: u64::from_ne_bytes(seed) | 1,
        }
    }

    pub(in crate::pulse) fn next(&mut self, now: u64) -> JobId {
        if now > self.last_ms {
            self.last_ms = now;
            self.seq = 0;
        } else if self.seq == u32::MAX {
            self.last_ms += 1;
            self.seq = 0;
        } else {
            self.seq += 1;
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        JobId::new(
            self.last_ms,
            (u64::from(self.seq) << 32) | (self.random & 0xffff_ffff),
        )
    }
}
