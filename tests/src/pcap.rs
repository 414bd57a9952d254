//! Just enough of the classic pcap file format (what `tcpdump -w` writes) to count the
//! captured packets by transport and port.

use anyhow::{bail, Result};

/// LINKTYPE_ETHERNET: the link type of a capture on a veth.
const LINKTYPE_ETHERNET: u32 = 1;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// Transport protocol of a captured packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

/// The transport endpoints of one captured packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// TCP or UDP.
    pub transport: Transport,
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

impl Ports {
    /// Whether the packet was sent from or to `port` over `transport`.
    pub fn uses(&self, transport: Transport, port: u16) -> bool {
        self.transport == transport && (self.src == port || self.dst == port)
    }
}

/// Splits a pcap file into its frames; a record cut short at the end is left out.
pub fn frames(file: &[u8]) -> Result<Vec<&[u8]>> {
    let Some(header) = file.get(..FILE_HEADER_LEN) else {
        bail!("not a pcap file: too short")
    };
    let big_endian = match header[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        _ => bail!("not a pcap file: bad magic {:02x?}", &header[..4]),
    };
    let read_u32 = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let link_type = read_u32(&header[20..24]);
    if link_type != LINKTYPE_ETHERNET {
        bail!("pcap link type {link_type}: only Ethernet captures are understood");
    }

    let mut frames = Vec::new();
    let mut rest = &file[FILE_HEADER_LEN..];
    while rest.len() >= RECORD_HEADER_LEN {
        let captured = read_u32(&rest[8..12]) as usize;
        let Some(frame) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + captured) else {
            break;
        };
        frames.push(frame);
        rest = &rest[RECORD_HEADER_LEN + captured..];
    }
    Ok(frames)
}

/// The TCP or UDP ports of an Ethernet frame carrying IPv4 or IPv6, if it has any.
pub fn ports(frame: &[u8]) -> Option<Ports> {
    let mut ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut payload = frame.get(14..)?;
    if ether_type == 0x8100 {
        ether_type = u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]);
        payload = payload.get(4..)?;
    }
    let (protocol, segment) = match ether_type {
        0x0800 => ipv4_payload(payload)?,
        0x86dd => (*payload.get(6)?, payload.get(40..)?),
        _ => return None,
    };
    let transport = match protocol {
        6 => Transport::Tcp,
        17 => Transport::Udp,
        _ => return None,
    };
    let src = u16::from_be_bytes([*segment.first()?, *segment.get(1)?]);
    let dst = u16::from_be_bytes([*segment.get(2)?, *segment.get(3)?]);
    Some(Ports {
        transport,
        src,
        dst,
    })
}

fn ipv4_payload(packet: &[u8]) -> Option<(u8, &[u8])> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
    // Later fragments carry no transport header.
    if fragment_offset != 0 {
        return None;
    }
    Some((*packet.get(9)?, packet.get(header_len..)?))
}

/// Counts the frames of a pcap file sent from or to `port` over `transport`.
pub fn count_port(file: &[u8], transport: Transport, port: u16) -> Result<usize> {
    let frames = frames(file)?;
    Ok(frames
        .iter()
        .filter_map(|f| ports(f))
        .filter(|p| p.uses(transport, port))
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp_frame(src: u16, dst: u16) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[9] = 6;
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&src.to_be_bytes());
        frame.extend_from_slice(&dst.to_be_bytes());
        frame.extend_from_slice(&[0u8; 16]);
        frame
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut file = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0u8; 8]);
        file.extend_from_slice(&65535u32.to_le_bytes());
        file.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for frame in frames {
            file.extend_from_slice(&[0u8; 8]);
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(frame);
        }
        file
    }

    #[test]
    fn counts_frames_by_port() {
        let file = pcap(&[ipv4_tcp_frame(40000, 15008), ipv4_tcp_frame(15008, 40000)]);
        let mut file_with_noise = file.clone();
        file_with_noise.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            count_port(&file_with_noise, Transport::Tcp, 15008).unwrap(),
            2
        );
        assert_eq!(count_port(&file, Transport::Tcp, 50051).unwrap(), 0);
        assert_eq!(count_port(&file, Transport::Udp, 15008).unwrap(), 0);
    }

    #[test]
    fn refuses_what_is_not_pcap() {
        assert!(frames(b"definitely not a capture file").is_err());
    }
}
