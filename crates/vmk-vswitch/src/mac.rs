//! MAC addresses: parsing and printing, and vmk's generator of stable, unique addresses.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// vmk's prefix for generated MACs: `02:56:4b` ("VK"), locally administered (bit 1 of the
/// first octet) and unicast (bit 0 clear), so it can never collide with a vendor's OUI.
pub const VMK_MAC_PREFIX: [u8; 3] = [0x02, 0x56, 0x4b];

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// An address a NIC may have: unicast and not all zeros.
    pub fn is_valid_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address: write six hex bytes separated by `:` or `-`, e.g. 02:56:4b:00:00:01")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// FNV-1a, 64 bit. Written out rather than taken from std's `DefaultHasher` because a
/// generated MAC must stay the same across vmk versions and Rust releases, and std does not
/// promise a stable algorithm; FNV-1a is a fixed, public definition of a few lines.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The MAC vmk generates for NIC `nic` of VM `vm`, `attempt` 0, 1, ... (the next attempt is
/// used when an address is taken): [`VMK_MAC_PREFIX`] and 24 bits of a hash of the three.
/// The same inputs always give the same address.
pub fn generated_mac(vm: &str, nic: u32, attempt: u32) -> MacAddr {
    let h = fnv1a(&[vm.as_bytes(), &nic.to_le_bytes(), &attempt.to_le_bytes()]);
    // Fold the 64 bits into 24.
    let x = (h ^ (h >> 24) ^ (h >> 48)) as u32;
    let [p0, p1, p2] = VMK_MAC_PREFIX;
    MacAddr([p0, p1, p2, (x >> 16) as u8, (x >> 8) as u8, x as u8])
}

/// Errors of [`MacAllocator`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("MAC address {0} is already used by another vNIC on this host; choose another one or leave it out to have one generated")]
    Duplicate(MacAddr),
    #[error("MAC address {0} is a group (multicast/broadcast) or all-zero address; a vNIC needs a unicast address (first octet even), e.g. 02:56:4b:00:00:01")]
    NotUnicast(MacAddr),
    #[error("no free MAC address for {vm} NIC {nic} after {attempts} attempts: the vmk prefix is exhausted; give the NIC an address explicitly")]
    Exhausted { vm: String, nic: u32, attempts: u32 },
}

/// The MACs in use on a host: generated addresses are unique and stable (the same VM name
/// and NIC index give the same address unless it is taken), and an address is refused if it
/// is already in use.
#[derive(Debug, Default, Clone)]
pub struct MacAllocator {
    used: HashSet<MacAddr>,
}

impl MacAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `mac` (given by the user), or fails if it is in use or not a unicast address.
    pub fn reserve(&mut self, mac: MacAddr) -> Result<MacAddr, MacError> {
        if !mac.is_valid_unicast() {
            return Err(MacError::NotUnicast(mac));
        }
        if !self.used.insert(mac) {
            return Err(MacError::Duplicate(mac));
        }
        Ok(mac)
    }

    /// Generates and takes the address of NIC `nic` of VM `vm`: the first free one of
    /// [`generated_mac`]`(vm, nic, 0..)`.
    pub fn generate(&mut self, vm: &str, nic: u32) -> Result<MacAddr, MacError> {
        const ATTEMPTS: u32 = 1 << 16;
        for attempt in 0..ATTEMPTS {
            let mac = generated_mac(vm, nic, attempt);
            if self.used.insert(mac) {
                return Ok(mac);
            }
        }
        Err(MacError::Exhausted {
            vm: vm.to_string(),
            nic,
            attempts: ATTEMPTS,
        })
    }

    /// Gives `mac` back (its vNIC is gone).
    pub fn release(&mut self, mac: MacAddr) {
        self.used.remove(&mac);
    }

    pub fn contains(&self, mac: MacAddr) -> bool {
        self.used.contains(&mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let m: MacAddr = "02:56:4B:00:0a:ff".parse().unwrap();
        assert_eq!(m.0, [0x02, 0x56, 0x4b, 0, 0x0a, 0xff]);
        assert_eq!(m.to_string(), "02:56:4b:00:0a:ff");
        assert_eq!("2-56-4b-0-a-ff".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "02:56:4b:00:0a",
            "02:56:4b:00:0a:ff:00",
            "02:56:4b:00:0a:fff",
            "g0:00:00:00:00:00",
            "02::4b:00:0a:ff",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("six hex bytes"), "{e}");
        }
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert!(!m.is_multicast() && m.is_valid_unicast());
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_and_distinct() {
        let a = generated_mac("web1", 0, 0);
        assert_eq!(a, generated_mac("web1", 0, 0), "stable");
        assert_eq!(&a.0[..3], &VMK_MAC_PREFIX);
        assert!(a.is_valid_unicast());
        assert_eq!(a.0[0] & 2, 2, "locally administered");
        assert_ne!(a, generated_mac("web1", 1, 0));
        assert_ne!(a, generated_mac("web2", 0, 0));
        assert_ne!(a, generated_mac("web1", 0, 1));
        // Few collisions among many VMs (24 bits: birthday bound ~0.03% for 100 names).
        let mut seen = HashSet::new();
        for vm in 0..100 {
            for nic in 0..4 {
                seen.insert(generated_mac(&format!("vm{vm}"), nic, 0));
            }
        }
        assert!(seen.len() >= 398, "{} distinct of 400", seen.len());
    }

    #[test]
    fn pinned_value() {
        // If this changes, every generated MAC changes: guests would see new NICs.
        assert_eq!(generated_mac("vm", 0, 0).to_string(), PINNED);
    }
    const PINNED: &str = "02:56:4b:fd:f5:81";

    #[test]
    fn allocator_refuses_duplicates_and_resolves_collisions() {
        let mut a = MacAllocator::new();
        let m = a.generate("db", 0).unwrap();
        assert_eq!(m, generated_mac("db", 0, 0));
        // Someone took the next VM's first choice explicitly: it gets its second.
        let want = generated_mac("db2", 0, 0);
        a.reserve(want).unwrap();
        let m2 = a.generate("db2", 0).unwrap();
        assert_eq!(m2, generated_mac("db2", 0, 1));
        let e = a.reserve(m).unwrap_err();
        assert_eq!(e, MacError::Duplicate(m));
        assert!(e.to_string().contains("already used"), "{e}");
        assert!(matches!(
            a.reserve(MacAddr([1, 0, 0, 0, 0, 1])),
            Err(MacError::NotUnicast(_))
        ));
        assert!(matches!(
            a.reserve(MacAddr([0; 6])),
            Err(MacError::NotUnicast(_))
        ));
        a.release(m);
        assert!(!a.contains(m));
        a.reserve(m).unwrap();
    }
}
