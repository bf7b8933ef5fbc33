//! A token bucket per client address, for calls anyone may make.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::AuthError;

/// Sustained calls per second and the burst allowed above it, per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Calls per second, sustained; 0 turns the limit off.
    pub per_second: u32,
    /// Calls a quiet client may make at once.
    pub burst: u32,
}

/// Clients remembered before idle ones are forgotten.
const MAX_CLIENTS: usize = 65_536;

/// Per-client token buckets. A client is an IPv4 address or an IPv6 /64
/// (one host usually holds a whole /64, so single addresses would let it
/// escape the limit).
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    limit_loopback: bool,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; loopback clients are exempt unless `limit_loopback` (set
    /// it when a proxy on the same host forwards outside traffic).
    pub fn new(limit: RateLimit, limit_loopback: bool) -> RateLimiter {
        RateLimiter {
            limit,
            limit_loopback,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` calls from `client`'s bucket at `now`.
    ///
    /// # Errors
    /// `rate_limited`, with the time after which the calls would fit.
    pub fn check(&self, client: Option<IpAddr>, n: u32, now: Instant) -> Result<(), AuthError> {
        let Some(ip) = client else { return Ok(()) };
        if self.limit.per_second == 0 || (ip.is_loopback() && !self.limit_loopback) {
            return Ok(());
        }
        let key = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            IpAddr::V6(v6) => IpAddr::V4(
                v6.to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            ),
            v4 => v4,
        };
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&key) {
            // A full bucket is the same as no bucket, so forgetting those
            // changes no verdict; if all are busy, start over rather than
            // grow without bound.
            buckets.retain(|_, (tokens, at)| {
                *tokens + rate * now.saturating_duration_since(*at).as_secs_f64() < burst
            });
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((burst, now));
        let refilled =
            (*tokens + rate * now.saturating_duration_since(*at).as_secs_f64()).min(burst);
        let wanted = f64::from(n);
        if refilled >= wanted {
            *tokens = refilled - wanted;
            *at = now.max(*at);
            Ok(())
        } else {
            *tokens = refilled;
            *at = now.max(*at);
            let wait = if wanted > burst {
                Duration::from_secs_f64(burst / rate)
            } else {
                Duration::from_secs_f64((wanted - refilled) / rate)
            };
            Err(AuthError::rate_limited(
                format!(
                    "{key} sent more than {} calls a second (burst {}); retry in {} ms",
                    self.limit.per_second,
                    self.limit.burst,
                    wait.as_millis().max(1)
                ),
                wait,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthCode;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimiter::new(
            RateLimit {
                per_second: 10,
                burst: 5,
            },
            false,
        );
        let t0 = Instant::now();
        for _ in 0..5 {
            l.check(ip("10.0.0.1"), 1, t0).unwrap();
        }
        let e = l.check(ip("10.0.0.1"), 1, t0).unwrap_err();
        assert_eq!(e.code(), AuthCode::RateLimited);
        let wait = e.retry_after().unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another client has its own bucket.
        l.check(ip("10.0.0.2"), 1, t0).unwrap();
        // 100 ms refills one call, and the refill never exceeds the burst.
        l.check(ip("10.0.0.1"), 1, t0 + Duration::from_millis(100))
            .unwrap();
        assert!(
            l.check(ip("10.0.0.1"), 1, t0 + Duration::from_millis(100))
                .is_err()
        );
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            l.check(ip("10.0.0.1"), 1, later).unwrap();
        }
        assert!(l.check(ip("10.0.0.1"), 1, later).is_err());
    }

    #[test]
    fn loopback_is_exempt_unless_asked_and_ipv6_counts_per_64() {
        let limit = RateLimit {
            per_second: 1,
            burst: 1,
        };
        let t0 = Instant::now();
        let open = RateLimiter::new(limit, false);
        for _ in 0..100 {
            open.check(ip("127.0.0.1"), 1, t0).unwrap();
            open.check(ip("::1"), 1, t0).unwrap();
            open.check(None, 1, t0).unwrap();
        }
        let strict = RateLimiter::new(limit, true);
        strict.check(ip("127.0.0.1"), 1, t0).unwrap();
        assert!(strict.check(ip("127.0.0.1"), 1, t0).is_err());
        strict.check(ip("2001:db8:1:2::1"), 1, t0).unwrap();
        assert!(strict.check(ip("2001:db8:1:2:ffff::9"), 1, t0).is_err());
        strict.check(ip("2001:db8:1:3::1"), 1, t0).unwrap();
        // An IPv4-mapped address is the IPv4 client.
        strict.check(ip("192.0.2.7"), 1, t0).unwrap();
        assert!(strict.check(ip("::ffff:192.0.2.7"), 1, t0).is_err());
    }

    #[test]
    fn a_request_larger_than_the_burst_waits_a_full_refill_and_off_means_off() {
        let l = RateLimiter::new(
            RateLimit {
                per_second: 10,
                burst: 4,
            },
            true,
        );
        let e = l.check(ip("10.0.0.1"), 50, Instant::now()).unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_millis(400)));
        let off = RateLimiter::new(
            RateLimit {
                per_second: 0,
                burst: 0,
            },
            true,
        );
        for _ in 0..1000 {
            off.check(ip("10.0.0.1"), 1, Instant::now()).unwrap();
        }
    }

    #[test]
    fn memory_stays_bounded_under_many_clients() {
        let l = RateLimiter::new(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            true,
        );
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let _ = l.check(Some(IpAddr::from(i.to_be_bytes())), 1, t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }
}
