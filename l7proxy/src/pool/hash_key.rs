//! The `consistent_hash` key of a request (`[[upstream]] hash_key`).

use pingora::http::RequestHeader;
use std::net::IpAddr;
use switchyard_shared::config::HashKey;

/// The `consistent_hash` key of a request.
pub fn hash_key(req: &RequestHeader, client_ip: Option<IpAddr>, key: &HashKey) -> Vec<u8> {
    match key {
        HashKey::ClientIp => client_ip
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
        HashKey::Path => req.uri.path().as_bytes().to_vec(),
        HashKey::Header(name) => req
            .headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain([b',']))
            .collect(),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/cart/1?x=2", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn each_key_kind_reads_its_part_of_the_request() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let req = request(&[
            ("x-user", "a"),
            ("x-user", "b"),
            ("cookie", "theme=dark; session=s1"),
            ("cookie", "other=1"),
        ]);
        assert_eq!(hash_key(&req, Some(ip), &HashKey::ClientIp), b"192.0.2.9");
        assert_eq!(hash_key(&req, None, &HashKey::ClientIp), b"");
        assert_eq!(hash_key(&req, None, &HashKey::Path), b"/cart/1");
        assert_eq!(
            hash_key(&req, None, &HashKey::Header("x-user".into())),
            b"a,b,"
        );
        assert_eq!(
            hash_key(&req, None, &HashKey::Cookie("session".into())),
            b"s1"
        );
        assert_eq!(
            hash_key(&req, None, &HashKey::Cookie("missing".into())),
            b""
        );
    }
}
