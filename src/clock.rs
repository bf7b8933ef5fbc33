//! The wall clock, in the unit every format uses: Unix milliseconds.

/// Now, in Unix milliseconds (0 if the system clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
