//! Pod IPs: every pod gets a loopback address of its own.
//!
//! Pods share the host network, so two pods can listen on the same port as
//! long as each binds to its own pod IP. All of 127.0.0.0/8 is loopback on
//! Linux; addresses start at 127.0.0.10 (below is left to the host).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// Hands out loopback addresses by pod uid and takes them back.
#[derive(Debug, Default)]
pub struct PodIpPool {
    inner: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    by_pod: HashMap<String, Ipv4Addr>,
    used: std::collections::HashSet<Ipv4Addr>,
}

const FIRST: u32 = u32::from_be_bytes([127, 0, 0, 10]);
const LAST: u32 = u32::from_be_bytes([127, 0, 255, 254]);

impl PodIpPool {
    /// The pod's address; the same one on every call until [`release`](Self::release).
    pub fn allocate(&self, pod_uid: &str) -> Option<Ipv4Addr> {
        let mut state = self.inner.lock().unwrap();
        if let Some(ip) = state.by_pod.get(pod_uid) {
            return Some(*ip);
        }
        let ip = (FIRST..=LAST)
            .map(Ipv4Addr::from)
            .filter(|ip| !matches!(ip.octets()[3], 0 | 255))
            .find(|ip| !state.used.contains(ip))?;
        state.used.insert(ip);
        state.by_pod.insert(pod_uid.into(), ip);
        Some(ip)
    }

    pub fn release(&self, pod_uid: &str) {
        let mut state = self.inner.lock().unwrap();
        if let Some(ip) = state.by_pod.remove(pod_uid) {
            state.used.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_stable_and_reused_after_release() {
        let pool = PodIpPool::default();
        let a = pool.allocate("a").unwrap();
        let b = pool.allocate("b").unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 0, 0, 10));
        assert_ne!(a, b);
        assert_eq!(pool.allocate("a"), Some(a));
        pool.release("a");
        assert_eq!(pool.allocate("c"), Some(a));
    }
}
