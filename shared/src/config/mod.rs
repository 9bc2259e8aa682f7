//! The configuration contract: one host file (the host operator's) naming the
//! tenants, and one tenant file per site.
//!
//! Loading validates a file as a whole: unknown keys, bad values, duplicate tenant
//! names, a host claimed by two tenants, a route naming a missing upstream, a
//! certificate or key that cannot be read. Every problem is reported as
//! `FILE:LINE:COL: message`, the location of the offending value, and all of a
//! file's problems are reported together. Relative paths in a file are relative
//! to that file.
//!
//! Tenant files are the tenant's, so only the tenant's own process reads them:
//! the splitter loads the host file alone, and validates a tenant file by running
//! `l7proxy --check` as the tenant's user. Every file is read through
//! [`crate::files::read_regular`]: regular files only, bounded in size.

//!
//! The module is split by file: [`source`] locates problems, [`host_file`] is the
//! host operator's file, [`tenant_file`] a site's.

mod host_file;
mod rules;
mod source;
mod tenant_file;
mod tls;
mod upstream;

pub use host_file::{
    AdminListen, HostConfig, Limits, ListenerConfig, Protocol, SplitterSettings, StartPolicy,
    TenantConfig, UnknownHost,
};
pub use rules::{HeaderRules, HeaderTemplate, RateKey, RateLimit, TemplatePart, FRAMING_AND_HOP};
pub use source::{resolve_relative, ConfigError, ConfigErrors, Location};
pub use tenant_file::{
    AccessTarget, Compression, HttpLimits, LogConfig, LogFormat, RedirectTo, RouteConfig,
    RouteTarget, TenantFile,
};
pub use tls::{AcmeChallenge, AcmeConfig, ClientAuth, TlsPolicy, TlsSource, TlsVersion};
pub use upstream::{
    parse_registration_ttl, DnsDiscovery, HashKey, HealthConfig, HealthKind, LbKind, PassiveHealth,
    RegistrationConfig, RegistrationListen, ServerAddr, ServerSpec, UpstreamConfig, UpstreamTls,
    DEFAULT_REGISTRATION_SOCKET, MAX_WEIGHT, REGISTRATION_TTL,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostPattern;
    use std::fs;
    use std::path::PathBuf;
    use std::time::Duration;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("sy-config-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("tenants")).unwrap();
            Dir(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const TENANT: &str = "[tls]\nself_signed = true\n[[route]]\npath = \"/\"\nrespond = \"echo\"\n";

    fn host_file(tenants: &str) -> String {
        format!("[splitter]\nruntime_dir = \"run\"\n[[listen]]\naddr = \"127.0.0.1:8443\"\nprotocol = \"tls\"\n{tenants}")
    }

    fn errors_of(dir: &Dir, host: &str) -> Vec<String> {
        let path = dir.write("host.toml", host);
        match HostConfig::load_all(&path) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn valid_file_loads_with_defaults_and_relative_paths() {
        let dir = Dir::new("valid");
        dir.write("tenants/a.toml", TENANT);
        let path = dir.write(
            "host.toml",
            &host_file("[[tenant]]\nname = \"a\"\nhosts = [\"A.example.com\", \"*.a.example.com\"]\nconfig = \"tenants/a.toml\"\n"),
        );
        let (host, tenants) = HostConfig::load_all(&path).unwrap();
        assert_eq!(host.splitter.runtime_dir, dir.0.join("run"));
        assert_eq!(host.splitter.peek_timeout, Duration::from_secs(10));
        assert!(host.splitter.sched_batch);
        assert_eq!(
            host.tenants[0].hosts[0],
            HostPattern::Exact("a.example.com".into())
        );
        assert_eq!(host.tenants[0].processes, 1);
        assert_eq!(tenants[0].tls, Some(TlsSource::SelfSigned));
        assert_eq!(tenants[0].routes[0].target, RouteTarget::Echo);
    }

    #[test]
    fn header_rules_and_rate_limits_are_validated() {
        let dir = Dir::new("rules");
        let bad = "[[route]]\npath = \"/\"\nrespond = \"echo\"\nrequest_headers = { set = { \"Content-Length\" = \"5\", \"X-A\" = \"$nope\" } }\nrate_limit = { per = \"cookie:x\", requests = 1 }\n";
        let path = dir.write("tenants/a.toml", bad);
        let errors = TenantFile::load(&path).unwrap_err().to_string();
        for expected in [
            "a.toml:4:19: request_headers: Content-Length frames the message",
            "a.toml:4:19: request_headers: x-a: unknown variable $nope",
            "a.toml:5:14: rate_limit per = \"cookie:x\"",
        ] {
            assert!(errors.contains(expected), "{expected}\n{errors}");
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        let dir = Dir::new("proxy-protocol");
        let errors = errors_of(
            &dir,
            "[splitter]\nruntime_dir = \"run\"\n[[listen]]\naddr = \"127.0.0.1:8443\"\nprotocol = \"tls\"\nproxy_protocol = true\n",
        );
        assert!(
            errors.iter().any(|e| e.contains("host.toml:6:18: listen 127.0.0.1:8443: proxy_protocol = true needs [splitter] trusted_proxies")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let dir = Dir::new("unknown");
        let errors = errors_of(&dir, "[splitter]\nthreads = 1\npeek_timout = \"1s\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("host.toml:3:1: unknown field `peek_timout`"),
            "{errors:?}"
        );
    }

    #[test]
    fn sched_batch_is_a_boolean() {
        let dir = Dir::new("sched");
        let path = dir.write(
            "host.toml",
            &host_file("").replace("[splitter]\n", "[splitter]\nsched_batch = false\n"),
        );
        assert!(
            !HostConfig::load_as(&path, false)
                .unwrap()
                .splitter
                .sched_batch
        );
        let errors = errors_of(
            &dir,
            &host_file("").replace("[splitter]\n", "[splitter]\nsched_batch = \"yes\"\n"),
        );
        assert!(errors[0].contains("host.toml:2:15:"), "{errors:?}");
        assert!(errors[0].contains("expected a boolean"), "{errors:?}");
    }

    #[test]
    fn bad_duration_is_located_at_its_value() {
        let dir = Dir::new("duration");
        let errors = errors_of(&dir, "[splitter]\npeek_timeout = \"10 parsecs\"\n");
        assert!(errors[0].contains("host.toml:2:16:"), "{errors:?}");
        assert!(errors[0].contains("unknown unit"), "{errors:?}");
    }

    #[test]
    fn duplicate_tenant_and_shared_host_are_reported_together() {
        let dir = Dir::new("dup");
        dir.write("tenants/a.toml", TENANT);
        let errors = errors_of(
            &dir,
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"x.com\"]\nconfig = \"tenants/a.toml\"\n\
                 [[tenant]]\nname = \"a\"\nhosts = [\"X.com.\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(":11:8: tenant name \"a\" is used twice"),
            "{errors:?}"
        );
        assert!(errors[1].contains(":12:10: host \"X.com.\""), "{errors:?}");
        assert!(
            errors[1].contains("already claimed by tenant \"a\""),
            "{errors:?}"
        );
    }

    #[test]
    fn tenant_file_errors_route_to_missing_upstream_and_unreadable_key() {
        let dir = Dir::new("tenant");
        dir.write(
            "tenants/a.toml",
            "[tls]\ncert = \"a.pem\"\nkey = \"missing.key\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ap\"\n",
        );
        dir.write("tenants/a.pem", "not really a cert");
        let errors = errors_of(
            &dir,
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("a.toml:3:7: cannot read TLS key"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains(
                "a.toml:8:12: route names upstream \"ap\", which is not defined (defined: app)"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_required_keys_are_located_at_their_tables() {
        let dir = Dir::new("required");
        dir.write(
            "tenants/a.toml",
            "[[upstream]]\nservers = [\"127.0.0.1:1\"]\n\n[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\nhealth = { path = \"/\" }\ndiscovery = { port = 80 }\n[[route]]\nupstream = \"b\"\n",
        );
        let errors = errors_of(
            &dir,
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("a.toml:1:1: an [[upstream]] needs a name"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("a.toml:7:10: health needs kind = \"tcp\" or \"http\""),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("a.toml:8:13: discovery.dns needs a name to resolve"),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_tenant_file_and_unknown_host_tenant() {
        let dir = Dir::new("missing");
        let errors = errors_of(
            &dir,
            &format!(
                "{}[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"nope.toml\"\n",
                host_file("").replace("[splitter]\n", "[splitter]\nunknown_host = \"b\"\n")
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(":2:16: unknown_host = \"b\" names no tenant"),
            "{errors:?}"
        );
        assert!(errors[1].contains("config file"), "{errors:?}");
    }

    #[test]
    fn upstream_pool_keys_are_checked_with_locations() {
        let dir = Dir::new("pools");
        dir.write(
            "tenants/a.toml",
            concat!(
                "[[upstream]]\n",
                "name = \"app\"\n",
                "servers = [\"127.0.0.1:1 weight=0\", \"db.local:5432\"]\n",
                "lb = \"fastest\"\n",
                "hash_key = \"header:X-User\"\n",
                "health = { kind = \"udp\" }\n",
                "tls = { verify = true }\n",
                "[[upstream]]\n",
                "name = \"empty\"\n",
                "[[route]]\n",
                "upstream = \"app\"\n",
                "[registration]\n",
                "listen = \"localhost:9901\"\n",
            ),
        );
        let errors = errors_of(
            &dir,
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        let expected = [
            "a.toml:3:12: server \"127.0.0.1:1 weight=0\": weight must be a whole number",
            "a.toml:3:36: server \"db.local:5432\" is not IP:port",
            "a.toml:4:6: lb = \"fastest\" is unknown",
            "a.toml:5:12: hash_key is used only with lb = \"consistent_hash\"",
            "a.toml:6:19: health kind \"udp\" is unknown",
            "a.toml:7:7: tls needs `sni`",
            "a.toml:9:8: upstream \"empty\" has no servers",
            "a.toml:13:10: [registration] listen \"localhost:9901\" is not IP:port or unix:PATH",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, want) in errors.iter().zip(expected) {
            assert!(error.contains(want), "{error}\n  expected: {want}");
        }
    }

    #[test]
    fn upstream_pool_keys_parse() {
        let dir = Dir::new("pools-ok");
        dir.write(
            "tenants/a.toml",
            concat!(
                "[[upstream]]\n",
                "name = \"app\"\n",
                "servers = [\"127.0.0.1:1 weight=3\"]\n",
                "lb = \"consistent_hash\"\n",
                "hash_key = \"cookie:sid\"\n",
                "max_in_flight = 8\n",
                "queue_timeout = \"250ms\"\n",
                "health = { kind = \"http\", path = \"/healthz\", interval = \"500ms\", fall = 2 }\n",
                "passive = { failures = 5, cooldown = \"3s\" }\n",
                "registration = true\n",
                "discovery = { dns = \"_app._tcp.example\", resolver = \"127.0.0.1:5353\" }\n",
                "[[route]]\n",
                "upstream = \"app\"\n",
                "[registration]\n",
                "listen = \"unix:register.sock\"\n",
            ),
        );
        let host = dir.write(
            "host.toml",
            &host_file(
                "[[tenant]]\nname = \"a\"\nhosts = [\"a.com\"]\nconfig = \"tenants/a.toml\"\n",
            ),
        );
        let config = HostConfig::load_as(&host, false).unwrap();
        let file = TenantFile::load(&config.tenants[0].config).unwrap();
        let app = &file.upstreams[0];
        assert_eq!(app.servers[0].weight, 3);
        assert_eq!(app.lb, LbKind::ConsistentHash);
        assert_eq!(app.hash_key, HashKey::Cookie("sid".into()));
        assert_eq!(app.max_in_flight, Some(8));
        assert_eq!(app.queue_timeout, Duration::from_millis(250));
        let health = app.health.as_ref().unwrap();
        assert_eq!((health.rise, health.fall), (2, 2));
        assert_eq!(app.passive.failures, 5);
        assert_eq!(
            app.dns.as_ref().unwrap().resolver,
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            file.registration.unwrap().listen,
            RegistrationListen::Unix("register.sock".into())
        );
    }

    #[test]
    fn respond_routes_log_and_passive_steps_are_validated_and_located() {
        let dir = Dir::new("site-keys");
        let good = "force_https = true\n[log]\naccess = \"logs/access.log\"\nformat = \"text\"\n[[route]]\npath = \"/old\"\nrespond = \"redirect\"\nto = \"https\"\n[[route]]\npath = \"/gone\"\nrespond = \"status\"\nstatus = 410\nbody = \"gone\"\n[[route]]\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\npassive = { failures = 2, steps = [\"1s\", \"5s\"] }\n";
        let path = dir.write("tenants/a.toml", good);
        let file = TenantFile::load(&path).unwrap();
        assert!(file.force_https);
        assert_eq!(
            file.log.access,
            AccessTarget::File("logs/access.log".into())
        );
        assert_eq!(file.log.format, LogFormat::Text);
        assert_eq!(
            file.routes[0].target,
            RouteTarget::Redirect {
                to: RedirectTo::Https,
                status: 308
            }
        );
        assert_eq!(
            file.routes[1].target,
            RouteTarget::Status {
                status: 410,
                body: "gone".into()
            }
        );
        assert_eq!(
            file.upstreams[0].passive.steps,
            [Duration::from_secs(1), Duration::from_secs(5)]
        );
        let bad = "[log]\naccess = \"../elsewhere.log\"\nformat = \"xml\"\n[[route]]\npath = \"/a\"\nrespond = \"redirect\"\n[[route]]\npath = \"/b\"\nrespond = \"redirect\"\nto = \"https\"\nstatus = 200\n[[route]]\npath = \"/c\"\nrespond = \"status\"\nstatus = 999\n[[route]]\npath = \"/d\"\nrespond = \"echo\"\nto = \"x\"\n";
        let path = dir.write("tenants/b.toml", bad);
        let errors = TenantFile::load(&path).unwrap_err().to_string();
        for expected in [
            "b.toml:2:10: [log] access",
            "b.toml:3:10: [log] format",
            "b.toml:6:11: respond = \"redirect\" needs `to`",
            "b.toml:11:10: redirect status 200",
            "b.toml:15:10: status 999",
            "b.toml:19:6: `to` belongs to",
        ] {
            assert!(errors.contains(expected), "{expected}\n{errors}");
        }
    }

    #[test]
    fn response_header_timeout_defaults_to_read_timeout() {
        let dir = Dir::new("header-timeout");
        let upstream = "[[route]]\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:1\"]\nread_timeout = \"7s\"\n";
        let path = dir.write("tenants/a.toml", upstream);
        let file = TenantFile::load(&path).unwrap();
        assert_eq!(
            file.upstreams[0].response_header_timeout,
            Duration::from_secs(7)
        );
        let path = dir.write(
            "tenants/b.toml",
            &format!("{upstream}response_header_timeout = \"2s\"\n"),
        );
        let file = TenantFile::load(&path).unwrap();
        assert_eq!(
            file.upstreams[0].response_header_timeout,
            Duration::from_secs(2)
        );
        let path = dir.write(
            "tenants/c.toml",
            &format!("{upstream}response_header_timeout = \"soon\"\n"),
        );
        let errors = TenantFile::load(&path).unwrap_err().to_string();
        assert!(errors.contains("c.toml:7:"), "{errors}");
    }

    #[test]
    fn http_limits_default_and_bad_values_are_located() {
        let dir = Dir::new("http-limits");
        let path = dir.write("tenants/a.toml", TENANT);
        let file = TenantFile::load(&path).unwrap();
        assert_eq!(file.http, HttpLimits::default());
        assert_eq!(file.http.max_request_header_bytes, 16 * 1024);
        let path = dir.write(
            "tenants/b.toml",
            &format!(
                "{TENANT}[http]\nmax_request_header_bytes = \"8KiB\"\nkeepalive_timeout = \"5s\"\nclient_header_timeout = \"3s\"\n"
            ),
        );
        let file = TenantFile::load(&path).unwrap();
        assert_eq!(file.http.max_request_header_bytes, 8 * 1024);
        assert_eq!(file.http.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(file.http.client_header_timeout, Duration::from_secs(3));
        assert_eq!(
            HttpLimits::default().client_header_timeout,
            Duration::from_secs(10)
        );
        let path = dir.write(
            "tenants/c.toml",
            &format!("{TENANT}[http]\nmax_request_header_bytes = \"2MiB\"\nmax_request_headers = 0\nclient_body_timeout = \"soon\"\nbogus = 1\n"),
        );
        let errors = TenantFile::load(&path).unwrap_err().to_string();
        assert!(errors.contains("unknown field `bogus`"), "{errors}");
        let path = dir.write(
            "tenants/d.toml",
            &format!("{TENANT}[http]\nmax_request_header_bytes = \"2MiB\"\nmax_request_headers = 0\nclient_body_timeout = \"soon\"\n"),
        );
        let errors = TenantFile::load(&path).unwrap_err().to_string();
        assert!(
            errors.contains("d.toml:7:28: [http] max_request_header_bytes must be between"),
            "{errors}"
        );
        assert!(
            errors.contains("d.toml:8:23: [http] max_request_headers must be between 1 and 256"),
            "{errors}"
        );
        assert!(
            errors.contains("d.toml:9:23: [http] client_body_timeout:"),
            "{errors}"
        );
    }
}
