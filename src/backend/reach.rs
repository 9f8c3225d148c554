//! How requests reach the backend: directly or through the proxy of `https_proxy`/`http_proxy` (unless `no_proxy` says otherwise), trusting the web PKI roots and the CAs of `--backend-ca-file`.
//!
//! ureq 2 reads proxies from the environment only with a feature this crate
//! does not enable, and then without `NO_PROXY`, with `ALL_PROXY` first and
//! `HTTPS_PROXY` also for http URLs. So the choice is made here, once per
//! backend URL (the backend is one host): for an https URL `https_proxy`,
//! else `HTTPS_PROXY`; for an http URL `http_proxy`, else `HTTP_PROXY`; none
//! when `no_proxy` (else `NO_PROXY`) matches the backend's host and port
//! (see `no_proxy`). The lower-case name wins, as with curl and wget.
//! `ALL_PROXY` is not used. Only http:// proxies are supported: an http
//! backend goes through ureq's proxy (absolute-form requests), an https one
//! through a CONNECT tunnel (see `tunnel`). The proxy URL may hold
//! `user:password@`, sent as Basic proxy authorization, and is never shown:
//! messages name the variable, and at most the proxy's host and port.

use std::path::PathBuf;
use std::sync::Arc;

use super::no_proxy::NoProxy;
use super::tls::CaFile;
use super::tunnel::{self, Tunnel};
use crate::config::{Env, Secret};

/// How backend requests go: validated before any thread starts.
#[derive(Clone, Default)]
pub struct Reach {
    pub(super) proxy: Option<ProxyRoute>,
    /// The proxy variable that was set but not used because `NO_PROXY`
    /// matches, and the `NO_PROXY` variable.
    bypassed: Option<(&'static str, &'static str)>,
    pub(super) ca_file: Option<CaFile>,
}

#[derive(Clone)]
pub(super) struct ProxyRoute {
    /// The variable it came from, for messages.
    pub(super) var: &'static str,
    /// For an http backend.
    proxy: ureq::Proxy,
    /// host:port, the only part of the URL ever shown.
    address: String,
    /// `Basic …` for the proxy: sent with CONNECT (https), or as a header of
    /// every plain-http request (see `BackendClient`).
    pub(super) authorization: Option<Secret>,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reach({})", self.describe())
    }
}

impl Reach {
    /// Decides the route to `base_url` (a URL `config` validated) from the
    /// environment, and reads the CA file, given as `(path, source)` where
    /// `source` names the flag or variable in messages.
    pub fn resolve(
        base_url: &str,
        ca_file: Option<(PathBuf, String)>,
        env: &dyn Env,
    ) -> Result<Reach, String> {
        let ca_file = match ca_file {
            None => None,
            Some((path, source)) => {
                Some(CaFile::load(&path).map_err(|problem| format!("{source}: {problem}"))?)
            }
        };
        let url = url::Url::parse(base_url).map_err(|e| format!("the backend URL: {e}"))?;
        let names = match url.scheme() {
            "https" => ["https_proxy", "HTTPS_PROXY"],
            _ => ["http_proxy", "HTTP_PROXY"],
        };
        let Some((var, value)) = names
            .into_iter()
            .find_map(|var| env.get(var).map(|value| (var, value)))
        else {
            return Ok(Reach {
                ca_file,
                ..Reach::default()
            });
        };
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(0);
        let no_proxy = ["no_proxy", "NO_PROXY"]
            .into_iter()
            .find_map(|name| env.get(name).map(|list| (name, list)));
        if let Some((name, list)) = no_proxy {
            if NoProxy::parse(&list).matches(host, port) {
                return Ok(Reach {
                    proxy: None,
                    bypassed: Some((var, name)),
                    ca_file,
                });
            }
        }
        Ok(Reach {
            proxy: Some(proxy_route(var, &value)?),
            bypassed: None,
            ca_file,
        })
    }

    /// The route in words for the start-up log line; no credentials.
    pub fn describe(&self) -> String {
        let mut text = match (&self.proxy, self.bypassed) {
            (Some(route), _) => format!(
                "through the proxy at {} (from {}{})",
                route.address,
                route.var,
                if route.authorization.is_some() {
                    ", with credentials"
                } else {
                    ""
                }
            ),
            (None, Some((var, no_proxy))) => {
                format!("directly ({no_proxy} matches the backend; {var} not used)")
            }
            (None, None) => "directly".to_string(),
        };
        match &self.ca_file {
            Some(ca) => text.push_str(&format!(
                ", trusting the web PKI roots and {} CA certificate(s) from {}",
                ca.count, ca.path
            )),
            None => text.push_str(", trusting the web PKI roots"),
        }
        text
    }

    /// Sets up an agent for `base_url` (a URL `config` validated): its proxy
    /// or tunnel and its trusted CAs. Never ureq's own proxy detection.
    pub(super) fn configure(
        &self,
        builder: ureq::AgentBuilder,
        base_url: &str,
    ) -> ureq::AgentBuilder {
        let mut builder = builder.try_proxy_from_env(false);
        let tls = self.ca_file.as_ref().map(|ca| ca.config.clone());
        let https_url = url::Url::parse(base_url)
            .ok()
            .filter(|u| u.scheme() == "https");
        match (&self.proxy, https_url) {
            (Some(route), Some(url)) => {
                let target = format!(
                    "{}:{}",
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(443)
                );
                let tunnel = Tunnel {
                    target,
                    authorization: route.authorization.clone(),
                    tls: tls.unwrap_or_else(super::tls::web_pki_config),
                };
                return builder
                    .resolver(tunnel::resolver(route.address.clone()))
                    .tls_connector(Arc::new(tunnel));
            }
            (Some(route), None) => builder = builder.proxy(route.proxy.clone()),
            (None, _) => {}
        }
        if let Some(tls) = tls {
            builder = builder.tls_config(tls);
        }
        builder
    }

    /// The proxy in use, by the variable it came from.
    pub fn proxy_var(&self) -> Option<&'static str> {
        self.proxy.as_ref().map(|p| p.var)
    }

    /// Values that must never reach a log line: the proxy's credentials as
    /// they travel (the Basic value, which ureq's debug lines of a plain-http
    /// request would show).
    pub fn secrets(&self) -> Vec<String> {
        self.proxy
            .iter()
            .filter_map(|p| p.authorization.as_ref())
            .map(|a| a.expose().to_string())
            .collect()
    }
}

/// Checks a proxy URL and builds ureq's proxy from its parts. Messages name
/// `var`, never the value (it may hold a password).
fn proxy_route(var: &'static str, value: &str) -> Result<ProxyRoute, String> {
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let not_shown = "the value is not shown: it may hold a password";
    let url = url::Url::parse(&with_scheme)
        .map_err(|e| format!("{var}: not a valid proxy URL ({e}; {not_shown})"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{var}: a {}:// proxy is not supported, only http:// (https goes through it with CONNECT)",
            url.scheme()
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) => name.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(_)) => {
            return Err(format!(
                "{var}: an IPv6 proxy address is not supported; give the proxy by name"
            ))
        }
        None => return Err(format!("{var}: the proxy URL has no host ({not_shown})")),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        (user, password) => {
            let user = percent_decode(user);
            let password = percent_decode(password.unwrap_or(""));
            if [&user, &password]
                .iter()
                .any(|s| s.chars().any(char::is_control))
                || user.contains(':')
            {
                return Err(format!(
                    "{var}: the proxy's user name or password holds a control character or the user name a colon ({not_shown})"
                ));
            }
            Some((user, password))
        }
    };
    let spec = match &credentials {
        Some((user, password)) => format!("http://{user}:{password}@{host}:{port}"),
        None => format!("http://{host}:{port}"),
    };
    let proxy = ureq::Proxy::new(&spec)
        .map_err(|_| format!("{var}: the proxy URL is not usable ({not_shown})"))?;
    Ok(ProxyRoute {
        var,
        proxy,
        address: format!("{host}:{port}"),
        authorization: credentials.map(|(user, password)| {
            Secret::new(format!(
                "Basic {}",
                base64(format!("{user}:{password}").as_bytes())
            ))
        }),
    })
}

/// `%XX` decoding of a URL's user or password (invalid escapes stay as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vars(Vec<(&'static str, &'static str)>);

    impl Env for Vars {
        fn get(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn reach(url: &str, vars: &[(&'static str, &'static str)]) -> Result<Reach, String> {
        Reach::resolve(url, None, &Vars(vars.to_vec()))
    }

    #[test]
    fn the_scheme_picks_the_variable_and_lower_case_wins() {
        let vars = [
            ("HTTPS_PROXY", "http://upper:3128"),
            ("HTTP_PROXY", "http://plain:3128"),
        ];
        let r = reach("https://backend.example/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), Some("HTTPS_PROXY"));
        assert!(r.describe().contains("upper:3128"), "{}", r.describe());
        let r = reach("http://backend.example/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), Some("HTTP_PROXY"));
        let vars = [
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "lower:8080"),
        ];
        let r = reach("https://backend.example/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), Some("https_proxy"));
        assert!(r.describe().contains("lower:8080"), "{}", r.describe());
        // No http proxy for an https backend, nor ALL_PROXY.
        let vars = [("HTTP_PROXY", "plain:3128"), ("ALL_PROXY", "all:3128")];
        let r = reach("https://backend.example/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), None);
        assert!(r.describe().starts_with("directly"), "{}", r.describe());
    }

    #[test]
    fn no_proxy_sends_matching_backends_directly() {
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "localhost, .internal.example"),
        ];
        let r = reach("https://monitor.internal.example:8443/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), None);
        assert!(
            r.describe().contains("NO_PROXY matches"),
            "{}",
            r.describe()
        );
        let r = reach("https://monitor.example/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), Some("HTTPS_PROXY"));
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("no_proxy", "other.example"),
            ("NO_PROXY", "*"),
        ];
        let r = reach("https://monitor.example/api", &vars).unwrap();
        assert_eq!(r.proxy_var(), Some("HTTPS_PROXY"));
        let vars = [("HTTP_PROXY", "proxy:3128"), ("NO_PROXY", "127.0.0.1:8080")];
        assert!(reach("http://127.0.0.1:8080/api", &vars)
            .unwrap()
            .proxy
            .is_none());
        assert!(reach("http://127.0.0.1:8081/api", &vars)
            .unwrap()
            .proxy
            .is_some());
    }

    #[test]
    fn credentials_become_basic_authorization_and_are_never_shown() {
        let vars = [(
            "HTTPS_PROXY",
            "http://probe%40eu:s3cr%3At@proxy.example:3128/",
        )];
        let r = reach("https://backend.example/api", &vars).unwrap();
        let route = r.proxy.as_ref().unwrap();
        // base64("probe@eu:s3cr:t")
        assert_eq!(
            route.authorization.as_ref().unwrap().expose(),
            "Basic cHJvYmVAZXU6czNjcjp0"
        );
        assert_eq!(r.secrets(), vec!["Basic cHJvYmVAZXU6czNjcjp0".to_string()]);
        let shown = format!("{} {r:?}", r.describe());
        assert!(shown.contains("proxy.example:3128"), "{shown}");
        assert!(
            !shown.contains("s3cr") && !shown.contains("probe%40"),
            "{shown}"
        );
        let r = reach("https://b.example", &[("HTTPS_PROXY", "proxy.example")]).unwrap();
        assert!(
            r.describe().contains("proxy.example:80"),
            "{}",
            r.describe()
        );
    }

    #[test]
    fn unusable_proxies_are_refused_by_variable_without_the_value() {
        for (value, problem) in [
            (
                "https://user:hunter2@proxy:3128",
                "https:// proxy is not supported",
            ),
            ("socks5://user:hunter2@proxy:1080", "socks5:// proxy"),
            ("http://user:hunter2@[::1]:3128", "IPv6"),
            ("http://user:hunter2@proxy:99999", "not a valid proxy URL"),
            ("http://us%0Aer:hunter2@proxy:3128", "control character"),
        ] {
            let e = reach("https://b.example", &[("HTTPS_PROXY", value)]).unwrap_err();
            assert!(e.starts_with("HTTPS_PROXY: "), "{value}: {e}");
            assert!(e.contains(problem), "{value}: {e}");
            assert!(!e.contains("hunter2"), "{value}: {e}");
        }
    }

    #[test]
    fn base64_and_percent_decoding() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
    }
}
