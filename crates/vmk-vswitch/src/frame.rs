//! Ethernet frames and 802.1Q tags, as the switch looks at them.

use crate::MacAddr;

pub const ETH_HLEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const ETHERTYPE_VLAN: u16 = 0x8100;

/// What the switch needs of a frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthHeader {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The 802.1Q tag control information, if the frame is tagged (TPID 0x8100).
    pub tci: Option<u16>,
}

impl EthHeader {
    /// Parses `frame`; None if it is shorter than an Ethernet header (or a tagged one).
    pub fn parse(frame: &[u8]) -> Option<EthHeader> {
        let h = frame.get(..ETH_HLEN)?;
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&h[..6]);
        src.copy_from_slice(&h[6..12]);
        let ethertype = u16::from_be_bytes([h[12], h[13]]);
        let tci = if ethertype == ETHERTYPE_VLAN {
            let t = frame.get(ETH_HLEN..ETH_HLEN + 2)?;
            // A tag must be followed by an inner EtherType.
            frame.get(ETH_HLEN + 2..ETH_HLEN + VLAN_TAG_LEN)?;
            Some(u16::from_be_bytes([t[0], t[1]]))
        } else {
            None
        };
        Some(EthHeader {
            dst: MacAddr(dst),
            src: MacAddr(src),
            tci,
        })
    }

    /// The VLAN ID of the tag (0 for priority-tagged frames), None if untagged.
    pub fn vid(&self) -> Option<u16> {
        self.tci.map(|t| t & 0x0fff)
    }
}

/// `frame` without its 802.1Q tag (the caller knows it has one).
pub fn untag(frame: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame.len() - VLAN_TAG_LEN);
    v.extend_from_slice(&frame[..12]);
    v.extend_from_slice(&frame[ETH_HLEN + 2..]);
    v
}

/// `frame` (untagged) with an 802.1Q tag for `vid` (priority 0) inserted.
pub fn tag(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame.len() + VLAN_TAG_LEN);
    v.extend_from_slice(&frame[..12]);
    v.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    v.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    v.extend_from_slice(&frame[12..]);
    v
}

/// Builds a frame: header, EtherType, payload (tests, benchmarks).
pub fn build(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ETH_HLEN + payload.len());
    v.extend_from_slice(&dst.0);
    v.extend_from_slice(&src.0);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_untag_roundtrip() {
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        let f = build(a, b, 0x0800, &[1, 2, 3, 4]);
        let h = EthHeader::parse(&f).unwrap();
        assert_eq!((h.dst, h.src, h.tci), (a, b, None));
        let t = tag(&f, 42);
        assert_eq!(t.len(), f.len() + 4);
        let h = EthHeader::parse(&t).unwrap();
        assert_eq!(h.vid(), Some(42));
        assert_eq!(&t[16..18], &[0x08, 0x00]);
        assert_eq!(untag(&t), f);
        assert!(EthHeader::parse(&f[..13]).is_none());
        assert!(
            EthHeader::parse(&t[..16]).is_none(),
            "tag without inner type"
        );
    }
}
