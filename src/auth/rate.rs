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

/// Buckets remembered; past this, the least throttled half is forgotten.
const MAX_CLIENTS: usize = 65_536;

/// An IPv6 /48 (a typical site allocation, 65,536 /64s) or an IPv4 /24
/// shares one bucket this many times larger than a single client's, so
/// holding many /64s or many addresses of one network does not multiply
/// the allowance without end.
const NETWORK_FACTOR: u32 = 16;

/// Per-client token buckets. A client is an IPv4 address or an IPv6 /64
/// (one host usually holds a whole /64, so single addresses would let it
/// escape the limit); clients also share their network's bucket, an IPv6
/// /48 or an IPv4 /24.
#[derive(Debug)]
pub struct RateLimiter {
    /// Calls per `unit`, sustained; 0: no limit.
    allowance: u32,
    /// Tokens a bucket holds at most.
    burst: f64,
    /// Tokens added per second.
    rate: f64,
    unit: Unit,
    limit_loopback: bool,
    /// By client or network, and its prefix length (a /48 and the /64 at
    /// its start share an address).
    buckets: Mutex<HashMap<(IpAddr, u8), (f64, Instant)>>,
}

/// A bucket key (address, prefix length) and its rate and burst.
type Bucket = ((IpAddr, u8), f64, f64);

/// What a limiter's allowance is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Second,
    Day,
}

impl RateLimiter {
    /// A limiter; loopback clients are exempt unless `limit_loopback` (set
    /// it when a proxy on the same host forwards outside traffic).
    pub fn new(limit: RateLimit, limit_loopback: bool) -> RateLimiter {
        RateLimiter {
            allowance: limit.per_second,
            burst: f64::from(limit.burst.max(1)),
            rate: f64::from(limit.per_second),
            unit: Unit::Second,
            limit_loopback,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// A limiter of `per_day` calls a day per client, all of which a
    /// quiet client may make at once (its bucket refills over the day); 0
    /// turns it off.
    pub fn daily(per_day: u32, limit_loopback: bool) -> RateLimiter {
        RateLimiter {
            allowance: per_day,
            burst: f64::from(per_day.max(1)),
            rate: f64::from(per_day) / 86_400.0,
            unit: Unit::Day,
            limit_loopback,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The buckets a call from `ip` draws on: the client's own, and its
    /// network's (/48 for IPv6, /24 for IPv4).
    fn buckets_of(&self, ip: IpAddr) -> Vec<Bucket> {
        let (rate, burst) = (self.rate, self.burst);
        let prefix = |v6: std::net::Ipv6Addr, bytes: usize| {
            let mut o = v6.octets();
            o[bytes..].fill(0);
            IpAddr::from(o)
        };
        let f = f64::from(NETWORK_FACTOR);
        let v4_buckets = |v4: std::net::Ipv4Addr| {
            let mut o = v4.octets();
            o[3] = 0;
            vec![
                ((IpAddr::V4(v4), 32), rate, burst),
                ((IpAddr::from(o), 24), rate * f, burst * f),
            ]
        };
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4_buckets(v4),
                None => vec![
                    ((prefix(v6, 8), 64), rate, burst),
                    ((prefix(v6, 6), 48), rate * f, burst * f),
                ],
            },
            IpAddr::V4(v4) => v4_buckets(v4),
        }
    }

    /// Takes `n` calls from `client`'s bucket at `now`.
    ///
    /// # Errors
    /// `rate_limited`, with the time after which the calls would fit.
    pub fn check(&self, client: Option<IpAddr>, n: u32, now: Instant) -> Result<(), AuthError> {
        let Some(ip) = client else { return Ok(()) };
        if self.allowance == 0 || (ip.is_loopback() && !self.limit_loopback) {
            return Ok(());
        }
        let wanted = f64::from(n);
        let keys = self.buckets_of(ip);
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() + keys.len() > MAX_CLIENTS {
            forget_least_throttled(&mut map, self.rate, now);
        }
        let level = |map: &HashMap<(IpAddr, u8), (f64, Instant)>, (key, rate, burst): &Bucket| {
            map.get(key).map_or(*burst, |(tokens, at)| {
                (tokens + rate * now.saturating_duration_since(*at).as_secs_f64()).min(*burst)
            })
        };
        // The longest wait of any bucket short of `n`; a call larger than
        // a bucket's burst waits for a full refill of it.
        let mut wait = Duration::ZERO;
        let mut short = None;
        for b in &keys {
            let have = level(&map, b);
            if have < wanted {
                let (key, rate, burst) = b;
                let need = if wanted > *burst {
                    *burst
                } else {
                    wanted - have
                };
                let w = Duration::from_secs_f64(need / rate);
                if w >= wait {
                    wait = w;
                    short = Some(*key);
                }
            }
        }
        for b in &keys {
            let have = level(&map, b);
            let left = if short.is_none() { have - wanted } else { have };
            map.insert(b.0, (left, now));
        }
        match short {
            None => Ok(()),
            Some((addr, bits)) => {
                let (who, factor) = if network(bits) {
                    (format!("network {addr}/{bits}"), NETWORK_FACTOR)
                } else {
                    (addr.to_string(), 1)
                };
                let allowance = self.allowance.saturating_mul(factor);
                let message = match self.unit {
                    Unit::Second => format!(
                        "{who} sent more than its {allowance} calls a second (burst {}); retry in {} ms",
                        (self.burst as u32).saturating_mul(factor),
                        wait.as_millis().max(1)
                    ),
                    Unit::Day => format!(
                        "{who} sent more than its {allowance} calls a day; retry in {} s",
                        wait.as_secs().max(1)
                    ),
                };
                Err(AuthError::rate_limited(message, wait))
            }
        }
    }
}

/// Whether a bucket of this prefix length is a network's (shared).
fn network(bits: u8) -> bool {
    bits == 48 || bits == 24
}

/// Forgets the half of the buckets that are fullest (least throttled):
/// a forgotten bucket comes back full, so the clients being held back
/// keep their state. O(n), once per n/2 new clients.
fn forget_least_throttled(
    map: &mut HashMap<(IpAddr, u8), (f64, Instant)>,
    rate: f64,
    now: Instant,
) {
    let mut levels: Vec<f64> = map
        .values()
        .map(|(t, at)| t + rate * now.saturating_duration_since(*at).as_secs_f64())
        .collect();
    let mid = levels.len() / 2;
    let (_, median, _) = levels.select_nth_unstable_by(mid, f64::total_cmp);
    let median = *median;
    let mut kept_at_median = 0usize;
    map.retain(|_, (t, at)| {
        let level = *t + rate * now.saturating_duration_since(*at).as_secs_f64();
        match level.total_cmp(&median) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal if kept_at_median < mid / 2 => {
                kept_at_median += 1;
                true
            }
            _ => false,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthCode;

    #[test]
    fn a_daily_allowance_is_spent_at_once_and_refills_over_the_day() {
        let l = RateLimiter::daily(3, false);
        let ip = Some(IpAddr::from([192, 0, 2, 9]));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(ip, 1, t0).unwrap();
        }
        let e = l.check(ip, 1, t0).unwrap_err();
        assert_eq!(e.code(), AuthCode::RateLimited);
        assert!(e.message().contains("3 calls a day"), "{}", e.message());
        // One call's worth comes back after a third of a day.
        let third = e.retry_after().unwrap();
        assert!((28_799..=28_801).contains(&third.as_secs()), "{third:?}");
        l.check(ip, 1, t0 + third).unwrap();
        assert!(l.check(ip, 1, t0 + third).is_err());
        // Off, and loopback exempt.
        RateLimiter::daily(0, false).check(ip, 100, t0).unwrap();
        l.check(Some(IpAddr::from([127, 0, 0, 1])), 100, t0)
            .unwrap();
    }

    fn limiter(per_second: u32, burst: u32, limit_loopback: bool) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst }, limit_loopback)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = limiter(10, 5, false);
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
        let l = limiter(10, 4, true);
        let e = l.check(ip("10.0.0.1"), 50, Instant::now()).unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_millis(400)));
        let off = limiter(0, 0, true);
        for _ in 0..1000 {
            off.check(ip("10.0.0.1"), 1, Instant::now()).unwrap();
        }
    }

    #[test]
    fn memory_stays_bounded_under_many_clients() {
        let l = limiter(1, 1, true);
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let _ = l.check(Some(IpAddr::from(i.to_be_bytes())), 1, t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }

    #[test]
    fn forgetting_clients_keeps_the_throttled_ones() {
        let l = limiter(1, 4, true);
        let t0 = Instant::now();
        let abuser = Some(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..4 {
            l.check(abuser, 1, t0).unwrap();
        }
        assert!(l.check(abuser, 1, t0).is_err());
        // Many quiet clients, each taking one call, overflow the table
        // several times over.
        for i in 0..(3 * MAX_CLIENTS as u32) {
            let _ = l.check(Some(IpAddr::from((i + (10 << 24)).to_be_bytes())), 1, t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_CLIENTS);
        assert!(
            l.check(abuser, 1, t0).is_err(),
            "the throttled client was forgotten"
        );
    }

    #[test]
    fn an_ipv6_network_shares_one_larger_bucket() {
        let l = limiter(1, 1, true);
        let t0 = Instant::now();
        let client = |n: u16| Some(IpAddr::from([0x2001, 0xdb8, 7, n, 0, 0, 0, 1]));
        for n in 0..NETWORK_FACTOR as u16 {
            l.check(client(n), 1, t0).unwrap();
        }
        let e = l.check(client(999), 1, t0).unwrap_err();
        assert!(
            e.message().contains("network 2001:db8:7::/48"),
            "{}",
            e.message()
        );
        // Another /48 is untouched.
        l.check(Some(IpAddr::from([0x2001, 0xdb8, 8, 0, 0, 0, 0, 1])), 1, t0)
            .unwrap();
    }

    /// The attack of issue 17: 127.0.0.2 and .3 each had a burst of their
    /// own. The addresses of one IPv4 /24 now share a bucket 16 times a
    /// client's.
    #[test]
    fn an_ipv4_network_shares_one_larger_bucket() {
        let l = limiter(1, 2, true);
        let t0 = Instant::now();
        let client = |n: u8| Some(IpAddr::from([198, 51, 100, n]));
        for n in 0..NETWORK_FACTOR as u8 {
            for _ in 0..2 {
                l.check(client(n), 1, t0).unwrap();
            }
        }
        let e = l.check(client(200), 1, t0).unwrap_err();
        assert!(
            e.message().contains("network 198.51.100.0/24"),
            "{}",
            e.message()
        );
        // An IPv4-mapped IPv6 address is its IPv4 address, in the same /24.
        let mapped = "::ffff:198.51.100.201".parse().ok();
        assert!(l.check(mapped, 1, t0).is_err());
        // Another /24 is untouched.
        l.check(Some(IpAddr::from([198, 51, 101, 1])), 1, t0)
            .unwrap();
    }
}
