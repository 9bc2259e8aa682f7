//! Address rules written in configuration: CIDR blocks (`trusted_proxies`) and
//! CIDR blocks with an optional port range (`[registration] allow_addrs`).

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// Why an address rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrRuleError {
    /// Neither a CIDR block nor an address.
    #[error("{0:?} is not a CIDR block (e.g. \"10.0.0.0/8\", \"::1/128\") or an IP address")]
    NotCidr(String),
    /// A port outside 1-65535.
    #[error("{rule:?}: port {port:?} is not 1-65535")]
    BadPort {
        /// The whole rule.
        rule: String,
        /// The port written.
        port: String,
    },
    /// A range whose low end is above its high end.
    #[error("{rule:?}: the port range {low}-{high} is empty")]
    EmptyRange {
        /// The whole rule.
        rule: String,
        /// The range's first port.
        low: u16,
        /// The range's last port.
        high: u16,
    },
}

/// Parses `"10.0.0.0/8"`, `"::1/128"` or a bare address (a /32 or /128 block).
pub fn parse_cidr(text: &str) -> Result<IpNet, AddrRuleError> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| AddrRuleError::NotCidr(text.to_string()))
}

/// Whether `ip` lies in one of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A block of addresses and the ports allowed in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrRule {
    /// The addresses.
    pub net: IpNet,
    /// The ports (all when none was written).
    pub ports: RangeInclusive<u16>,
}

impl AddrRule {
    /// Parses `"127.0.0.0/8"`, `"10.1.0.0/16:8000-8999"`, `"::1/128:443"`.
    pub fn parse(text: &str) -> Result<AddrRule, AddrRuleError> {
        let text = text.trim();
        let (net_text, ports) = match text.split_once('/') {
            Some((ip, rest)) => match rest.split_once(':') {
                Some((prefix, ports)) => (format!("{ip}/{prefix}"), Some(ports)),
                None => (text.to_string(), None),
            },
            None => (text.to_string(), None),
        };
        let net = parse_cidr(&net_text)?;
        let ports = match ports {
            None => 1..=u16::MAX,
            Some(p) => {
                let (low, high) = p.split_once('-').unwrap_or((p, p));
                let parse = |s: &str| {
                    s.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| AddrRuleError::BadPort {
                            rule: text.to_string(),
                            port: s.to_string(),
                        })
                };
                let (low, high) = (parse(low)?, parse(high)?);
                if low > high {
                    return Err(AddrRuleError::EmptyRange {
                        rule: text.to_string(),
                        low,
                        high,
                    });
                }
                low..=high
            }
        };
        Ok(AddrRule { net, ports })
    }

    /// Whether `addr` is allowed by this rule.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.net.contains(&canonical(addr.ip())) && self.ports.contains(&addr.port())
    }
}

impl std::fmt::Display for AddrRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.net)?;
        if self.ports != (1..=u16::MAX) {
            write!(f, ":{}-{}", self.ports.start(), self.ports.end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let nets = vec![
            parse_cidr("10.0.0.0/8").unwrap(),
            parse_cidr("::1").unwrap(),
        ];
        assert!(in_any(&nets, "10.2.3.4".parse().unwrap()));
        assert!(in_any(&nets, "::ffff:10.2.3.4".parse().unwrap()));
        assert!(in_any(&nets, "::1".parse().unwrap()));
        assert!(!in_any(&nets, "11.0.0.1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn addr_rules() {
        let rule = AddrRule::parse("127.0.0.0/8:8000-8999").unwrap();
        assert!(rule.allows("127.0.0.1:8080".parse().unwrap()));
        assert!(!rule.allows("127.0.0.1:22".parse().unwrap()));
        assert!(!rule.allows("10.0.0.1:8080".parse().unwrap()));
        let v6 = AddrRule::parse("::1/128:443").unwrap();
        assert!(v6.allows("[::1]:443".parse().unwrap()));
        assert!(!v6.allows("[::1]:444".parse().unwrap()));
        assert!(AddrRule::parse("::1/128")
            .unwrap()
            .allows("[::1]:1".parse().unwrap()));
        assert!(AddrRule::parse("127.0.0.0/8:9-1").is_err());
        assert!(AddrRule::parse("127.0.0.0/8:0").is_err());
        assert!(AddrRule::parse("127.0.0.0/8:x").is_err());
    }
}
