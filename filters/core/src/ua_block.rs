//! ua-block: answer requests whose User-Agent matches a deny list with a local response.
//!
//! Order of decision: a missing (or empty) User-Agent follows `missing_user_agent`; otherwise an
//! `allow` match lets the request through, then a `deny` match blocks it, and anything else passes.

use crate::config::{parse_json, regex_reason, ConfigError};
use crate::http::HeaderList;
use crate::presets::{preset, PRESET_NAMES};
use crate::{Action, Direction, Host, LogLevel};
use aho_corasick::AhoCorasick;
use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Requests blocked, or that would have been blocked in dry run.
pub const DENIED_TOTAL: &str = "portcullis_ua_block_denied_total";
/// Requests let through because nothing denied them (dry-run hits are not counted here).
pub const ALLOWED_TOTAL: &str = "portcullis_ua_block_allowed_total";
/// Requests that matched a deny rule but were let through because of `dry_run`.
pub const DRY_RUN_TOTAL: &str = "portcullis_ua_block_dry_run_total";
/// Every counter this filter writes, for hosts that define metrics up front.
pub const METRICS: &[&str] = &[DENIED_TOTAL, ALLOWED_TOTAL, DRY_RUN_TOTAL];

/// Longest piece of a User-Agent written to a log line.
const LOGGED_UA_CHARS: usize = 256;

/// One pattern list (`deny` or `allow`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Patterns {
    /// Substrings of the User-Agent.
    pub contains: Vec<String>,
    /// Whole User-Agent values.
    pub exact: Vec<String>,
    /// Regular expressions (Rust `regex` syntax), unanchored unless they anchor themselves.
    pub regex: Vec<String>,
    /// Names of shipped lists, matched like `contains`.
    pub presets: Vec<String>,
}

impl Patterns {
    pub fn is_empty(&self) -> bool {
        self.contains.is_empty()
            && self.exact.is_empty()
            && self.regex.is_empty()
            && self.presets.is_empty()
    }
}

/// What to do with a request that has no User-Agent, or an empty one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingUserAgent {
    #[default]
    Allow,
    Deny,
}

/// The filter's JSON config, as the user writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UaBlockConfig {
    pub deny: Patterns,
    pub allow: Patterns,
    pub missing_user_agent: MissingUserAgent,
    pub case_sensitive: bool,
    pub status: u16,
    pub body: String,
    pub dry_run: bool,
    /// Extra headers on the local response (for example `content-type`).
    pub response_headers: HeaderList,
}

impl Default for UaBlockConfig {
    fn default() -> Self {
        Self {
            deny: Patterns::default(),
            allow: Patterns::default(),
            missing_user_agent: MissingUserAgent::Allow,
            case_sensitive: false,
            status: 403,
            body: "Forbidden\n".to_string(),
            dry_run: false,
            response_headers: HeaderList::default(),
        }
    }
}

/// Which pattern matched, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit<'a> {
    /// Where the pattern came from: `deny.contains`, `allow.regex`, `deny.presets[ai-crawlers]`...
    pub source: &'a str,
    pub pattern: &'a str,
}

impl fmt::Display for Hit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.source, self.pattern)
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Nothing denied the request (or the User-Agent is missing and missing ones are allowed).
    Pass,
    /// An allow pattern matched; allow wins over deny.
    AllowListed(Hit<'a>),
    /// The User-Agent is missing or empty and `missing_user_agent` is `deny`.
    DenyMissing,
    /// A deny pattern matched.
    DenyMatched(Hit<'a>),
}

impl Decision<'_> {
    pub fn is_deny(&self) -> bool {
        matches!(self, Decision::DenyMissing | Decision::DenyMatched(_))
    }
}

#[derive(Debug)]
struct Source {
    source: String,
    pattern: String,
}

impl Source {
    fn hit(&self) -> Hit<'_> {
        Hit {
            source: &self.source,
            pattern: &self.pattern,
        }
    }
}

/// A compiled pattern list. Case-insensitive matching lowercases both the patterns and the
/// User-Agent (Unicode lowercase) for `contains` and `exact`; regexes use the regex engine's
/// case-insensitive mode, so an inline `(?-i)` in a pattern still wins.
#[derive(Debug)]
struct Matcher {
    case_sensitive: bool,
    exact: HashMap<String, usize>,
    exact_src: Vec<Source>,
    contains: Option<AhoCorasick>,
    contains_src: Vec<Source>,
    regex: Option<RegexSet>,
    regex_src: Vec<Source>,
}

fn fold(s: &str, case_sensitive: bool) -> Cow<'_, str> {
    if case_sensitive || (s.is_ascii() && !s.bytes().any(|b| b.is_ascii_uppercase())) {
        Cow::Borrowed(s)
    } else if s.is_ascii() {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        // Not only `is_uppercase` chars change: titlecase letters (U+01C5) lowercase too.
        Cow::Owned(s.to_lowercase())
    }
}

fn empty_pattern(field: String) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: "empty pattern (it would match every user agent)".to_string(),
    }
}

impl Matcher {
    fn compile(list: &str, p: &Patterns, case_sensitive: bool) -> Result<Self, ConfigError> {
        let mut m = Matcher {
            case_sensitive,
            exact: HashMap::new(),
            exact_src: Vec::new(),
            contains: None,
            contains_src: Vec::new(),
            regex: None,
            regex_src: Vec::new(),
        };

        for (i, pat) in p.exact.iter().enumerate() {
            if pat.trim().is_empty() {
                return Err(empty_pattern(format!("{list}.exact[{i}]")));
            }
            // User agents are compared trimmed, so the pattern is too.
            m.exact
                .entry(fold(pat.trim(), case_sensitive).into_owned())
                .or_insert(m.exact_src.len());
            m.exact_src.push(Source {
                source: format!("{list}.exact"),
                pattern: pat.clone(),
            });
        }

        let mut needles: Vec<String> = Vec::new();
        for (i, pat) in p.contains.iter().enumerate() {
            if pat.is_empty() {
                return Err(empty_pattern(format!("{list}.contains[{i}]")));
            }
            needles.push(fold(pat, case_sensitive).into_owned());
            m.contains_src.push(Source {
                source: format!("{list}.contains"),
                pattern: pat.clone(),
            });
        }
        let mut seen_presets: Vec<&str> = Vec::new();
        for (i, name) in p.presets.iter().enumerate() {
            let field = format!("{list}.presets[{i}]");
            let data = match preset(name) {
                None => {
                    return Err(ConfigError::UnknownPreset {
                        field,
                        name: name.clone(),
                        known: PRESET_NAMES.join(", "),
                    })
                }
                Some(Err(e)) => {
                    return Err(ConfigError::Invalid {
                        field,
                        reason: format!("preset data is corrupt: {e}"),
                    })
                }
                Some(Ok(data)) => data,
            };
            if seen_presets.contains(&name.as_str()) {
                continue;
            }
            seen_presets.push(name);
            for pat in data.patterns {
                needles.push(fold(&pat, case_sensitive).into_owned());
                m.contains_src.push(Source {
                    source: format!("{list}.presets[{name}]"),
                    pattern: pat,
                });
            }
        }
        if !needles.is_empty() {
            let ac = AhoCorasick::new(&needles).map_err(|e| ConfigError::Invalid {
                field: format!("{list}.contains"),
                reason: format!("cannot build the matcher: {e}"),
            })?;
            m.contains = Some(ac);
        }

        for (i, pat) in p.regex.iter().enumerate() {
            let field = format!("{list}.regex[{i}]");
            if pat.is_empty() {
                return Err(empty_pattern(field));
            }
            // Compile one by one first so an error names the pattern, not just the set.
            RegexBuilder::new(pat)
                .case_insensitive(!case_sensitive)
                .build()
                .map_err(|e| ConfigError::Regex {
                    field,
                    pattern: pat.clone(),
                    reason: regex_reason(&e),
                })?;
            m.regex_src.push(Source {
                source: format!("{list}.regex"),
                pattern: pat.clone(),
            });
        }
        if !p.regex.is_empty() {
            let set = RegexSetBuilder::new(&p.regex)
                .case_insensitive(!case_sensitive)
                .build()
                .map_err(|e| ConfigError::Invalid {
                    field: format!("{list}.regex"),
                    reason: format!("the patterns together do not compile: {}", regex_reason(&e)),
                })?;
            m.regex = Some(set);
        }
        Ok(m)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.contains.is_none() && self.regex.is_none()
    }

    fn find(&self, ua: &str) -> Option<Hit<'_>> {
        let folded = fold(ua, self.case_sensitive);
        if let Some(&i) = self.exact.get(folded.as_ref()) {
            return self.exact_src.get(i).map(Source::hit);
        }
        if let Some(ac) = &self.contains {
            if let Some(m) = ac.find(folded.as_ref()) {
                return self
                    .contains_src
                    .get(m.pattern().as_usize())
                    .map(Source::hit);
            }
        }
        if let Some(set) = &self.regex {
            if let Some(i) = set.matches(ua).iter().next() {
                return self.regex_src.get(i).map(Source::hit);
            }
        }
        None
    }
}

/// A validated, compiled ua-block config: build once per config, share across requests.
#[derive(Debug)]
pub struct UaBlock {
    deny: Matcher,
    allow: Matcher,
    missing: MissingUserAgent,
    status: u16,
    body: String,
    dry_run: bool,
    response_headers: Vec<(String, String)>,
}

impl UaBlock {
    /// Parse and compile a JSON config. Empty input means the default config.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::new(&parse_json::<UaBlockConfig>(bytes)?)
    }

    pub fn new(cfg: &UaBlockConfig) -> Result<Self, ConfigError> {
        if !(200..=599).contains(&cfg.status) {
            return Err(ConfigError::Status {
                field: "status".to_string(),
                value: cfg.status,
            });
        }
        Ok(Self {
            deny: Matcher::compile("deny", &cfg.deny, cfg.case_sensitive)?,
            allow: Matcher::compile("allow", &cfg.allow, cfg.case_sensitive)?,
            missing: cfg.missing_user_agent,
            status: cfg.status,
            body: cfg.body.clone(),
            dry_run: cfg.dry_run,
            response_headers: cfg.response_headers.normalized("response_headers")?,
        })
    }

    /// True when no request can ever be denied (no deny patterns, missing user agents allowed).
    pub fn is_noop(&self) -> bool {
        self.deny.is_empty() && self.missing == MissingUserAgent::Allow
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Decide for the values of every User-Agent header of one request. Allow wins if any value
    /// is allow-listed; otherwise any value matching a deny pattern denies.
    pub fn decide<'a, S: AsRef<str>>(&'a self, user_agents: &[S]) -> Decision<'a> {
        let present: Vec<&str> = user_agents
            .iter()
            .map(|v| v.as_ref().trim())
            .filter(|v| !v.is_empty())
            .collect();
        if present.is_empty() {
            return match self.missing {
                MissingUserAgent::Allow => Decision::Pass,
                MissingUserAgent::Deny => Decision::DenyMissing,
            };
        }
        if let Some(hit) = present.iter().find_map(|ua| self.allow.find(ua)) {
            return Decision::AllowListed(hit);
        }
        if let Some(hit) = present.iter().find_map(|ua| self.deny.find(ua)) {
            return Decision::DenyMatched(hit);
        }
        Decision::Pass
    }

    /// The request-headers callback: counts, logs, and answers denied requests locally.
    pub fn on_request_headers<H: Host>(&self, host: &mut H) -> Action {
        let user_agents: Vec<String> = host
            .headers(Direction::Request)
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
            .map(|(_, v)| v)
            .collect();
        let decision = self.decide(&user_agents);
        let reason = match decision {
            Decision::Pass => {
                host.counter_add(ALLOWED_TOTAL, 1);
                return Action::Continue;
            }
            Decision::AllowListed(hit) => {
                host.counter_add(ALLOWED_TOTAL, 1);
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "ua-block: allowed by {hit}, user-agent {}",
                        shown(&user_agents)
                    ),
                );
                return Action::Continue;
            }
            Decision::DenyMissing => "missing user-agent".to_string(),
            Decision::DenyMatched(hit) => format!("matched {hit}"),
        };
        host.counter_add(DENIED_TOTAL, 1);
        if self.dry_run {
            host.counter_add(DRY_RUN_TOTAL, 1);
            host.log(
                LogLevel::Info,
                &format!(
                    "ua-block: dry run, would deny ({reason}), user-agent {}",
                    shown(&user_agents)
                ),
            );
            return Action::Continue;
        }
        host.log(
            LogLevel::Debug,
            &format!(
                "ua-block: denied ({reason}), user-agent {}",
                shown(&user_agents)
            ),
        );
        let headers: Vec<(&str, &str)> = self
            .response_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        host.send_local_response(self.status, &headers, self.body.as_bytes());
        Action::Stop
    }
}

/// The User-Agent values for a log line: escaped (no log injection) and cut to a sane length.
fn shown(values: &[String]) -> String {
    let joined = values.join(", ");
    let cut: String = joined.chars().take(LOGGED_UA_CHARS).collect();
    if cut.len() < joined.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    fn filter(json: &str) -> UaBlock {
        UaBlock::from_json(json.as_bytes())
            .unwrap_or_else(|e| panic!("config {json} rejected: {e}"))
    }

    fn run(f: &UaBlock, ua: Option<&str>) -> (Action, MemoryHost) {
        let mut host = match ua {
            Some(ua) => MemoryHost::with_request(&[(":path", "/"), ("user-agent", ua)]),
            None => MemoryHost::with_request(&[(":path", "/")]),
        };
        let action = f.on_request_headers(&mut host);
        (action, host)
    }

    fn err(json: &str) -> ConfigError {
        match UaBlock::from_json(json.as_bytes()) {
            Ok(_) => panic!("config {json} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn blocked_gets_local_response_and_counts() {
        let f = filter(r#"{"deny":{"contains":["GPTBot"]}}"#);
        let (action, host) = run(
            &f,
            Some("Mozilla/5.0 (compatible; GPTBot/1.1; +https://openai.com/gptbot)"),
        );
        assert_eq!(action, Action::Stop);
        let resp = host.local_response.as_ref().expect("local response");
        assert_eq!(resp.status, 403);
        assert_eq!(resp.body, b"Forbidden\n");
        assert_eq!(host.counter(DENIED_TOTAL), 1);
        assert_eq!(host.counter(ALLOWED_TOTAL), 0);
    }

    #[test]
    fn allowed_passes_and_counts() {
        let f = filter(r#"{"deny":{"contains":["GPTBot"]}}"#);
        let (action, host) = run(&f, Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"));
        assert_eq!(action, Action::Continue);
        assert!(host.local_response.is_none());
        assert_eq!(host.counter(ALLOWED_TOTAL), 1);
        assert_eq!(host.counter(DENIED_TOTAL), 0);
    }

    #[test]
    fn allow_wins_over_deny() {
        let f = filter(r#"{"deny":{"contains":["bot"]},"allow":{"contains":["Googlebot"]}}"#);
        let (action, host) = run(&f, Some("Mozilla/5.0 (compatible; Googlebot/2.1)"));
        assert_eq!(action, Action::Continue);
        assert_eq!(host.counter(ALLOWED_TOTAL), 1);
        let (action, _) = run(&f, Some("SomeOtherBot/1.0"));
        assert_eq!(action, Action::Stop);
        assert!(matches!(
            f.decide(&["Googlebot/2.1"]),
            Decision::AllowListed(Hit {
                source: "allow.contains",
                pattern: "Googlebot"
            })
        ));
    }

    #[test]
    fn allow_wins_across_repeated_headers_and_any_value_can_deny() {
        let f = filter(r#"{"deny":{"contains":["evil"]},"allow":{"exact":["friend"]}}"#);
        assert!(f.decide(&["fine", "evil"]).is_deny());
        assert!(!f.decide(&["evil", "friend"]).is_deny());
        let mut host =
            MemoryHost::with_request(&[("user-agent", "fine"), ("user-agent", "evil/1")]);
        assert_eq!(f.on_request_headers(&mut host), Action::Stop);
    }

    #[test]
    fn missing_user_agent_allow_and_deny() {
        let allow = filter(r#"{"deny":{"contains":["x"]},"missing_user_agent":"allow"}"#);
        let deny = filter(r#"{"deny":{"contains":["x"]},"missing_user_agent":"deny"}"#);
        for ua in [None, Some(""), Some("   ")] {
            let (a, h) = run(&allow, ua);
            assert_eq!(a, Action::Continue, "ua {ua:?}");
            assert_eq!(h.counter(ALLOWED_TOTAL), 1);
            let (a, h) = run(&deny, ua);
            assert_eq!(a, Action::Stop, "ua {ua:?}");
            assert_eq!(h.counter(DENIED_TOTAL), 1);
            assert_eq!(
                deny.decide(&ua.into_iter().collect::<Vec<_>>()),
                Decision::DenyMissing
            );
        }
        // The default is allow.
        let (a, _) = run(&filter(r#"{"deny":{"contains":["x"]}}"#), None);
        assert_eq!(a, Action::Continue);
    }

    #[test]
    fn missing_deny_even_with_empty_lists() {
        let f = filter(r#"{"missing_user_agent":"deny"}"#);
        assert!(!f.is_noop());
        assert_eq!(run(&f, None).0, Action::Stop);
        assert_eq!(run(&f, Some("curl/8")).0, Action::Continue);
    }

    #[test]
    fn contains_case_insensitive_by_default_and_sensitive_on_request() {
        let ci = filter(r#"{"deny":{"contains":["GPTBot"]}}"#);
        assert!(ci.decide(&["x gptbot y"]).is_deny());
        assert!(ci.decide(&["x GPTBOT y"]).is_deny());
        let cs = filter(r#"{"deny":{"contains":["GPTBot"]},"case_sensitive":true}"#);
        assert!(!cs.decide(&["x gptbot y"]).is_deny());
        assert!(cs.decide(&["x GPTBot y"]).is_deny());
    }

    #[test]
    fn exact_case_insensitive_by_default_and_sensitive_on_request() {
        let ci = filter(r#"{"deny":{"exact":["curl/7.0"]}}"#);
        assert!(ci.decide(&["CURL/7.0"]).is_deny());
        assert!(ci.decide(&["curl/7.0"]).is_deny());
        assert!(
            !ci.decide(&["curl/7.01"]).is_deny(),
            "exact is not a prefix match"
        );
        assert!(!ci.decide(&["xcurl/7.0"]).is_deny());
        assert!(filter(r#"{"deny":{"exact":[" curl/7.0 "]}}"#)
            .decide(&["curl/7.0"])
            .is_deny());
        assert!(
            ci.decide(&["  curl/7.0\t"]).is_deny(),
            "the header value is trimmed"
        );
        let cs = filter(r#"{"deny":{"exact":["curl/7.0"]},"case_sensitive":true}"#);
        assert!(!cs.decide(&["CURL/7.0"]).is_deny());
        assert!(cs.decide(&["curl/7.0"]).is_deny());
    }

    #[test]
    fn regex_case_insensitive_by_default_and_sensitive_on_request() {
        let ci = filter(r#"{"deny":{"regex":["^python-requests/\\d+"]}}"#);
        assert!(ci.decide(&["Python-Requests/2.31"]).is_deny());
        assert!(!ci.decide(&["my python-requests/2"]).is_deny(), "anchored");
        let cs = filter(r#"{"deny":{"regex":["^python-requests/"]},"case_sensitive":true}"#);
        assert!(!cs.decide(&["Python-requests/2"]).is_deny());
        assert!(cs.decide(&["python-requests/2"]).is_deny());
        // An inline flag in the pattern wins over the global setting.
        let inline =
            filter(r#"{"deny":{"regex":["(?i)python-requests/.*"]},"case_sensitive":true}"#);
        assert!(inline.decide(&["PYTHON-REQUESTS/1"]).is_deny());
    }

    #[test]
    fn unicode_case_folding() {
        let f = filter(r#"{"deny":{"contains":["ÄBot"],"exact":["ÉCLAIR"],"regex":["straße"]}}"#);
        assert!(f.decide(&["x äbot"]).is_deny());
        assert!(f.decide(&["éclair"]).is_deny());
        assert!(f.decide(&["STRAßE"]).is_deny());
        // A titlecase letter is not uppercase, but still folds.
        let t = filter(r#"{"deny":{"contains":["\u01c6"]}}"#);
        assert!(t.decide(&["x\u{01c5}y"]).is_deny());
    }

    #[test]
    fn regex_hit_names_pattern() {
        let f = filter(r#"{"deny":{"regex":["aaa","b+c"]}}"#);
        assert_eq!(
            f.decide(&["xbbc"]),
            Decision::DenyMatched(Hit {
                source: "deny.regex",
                pattern: "b+c"
            })
        );
    }

    #[test]
    fn preset_blocks_known_crawlers() {
        let f = filter(r#"{"deny":{"presets":["ai-crawlers"]}}"#);
        for ua in [
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
            "Mozilla/5.0 (compatible; ClaudeBot/1.0; +claudebot@anthropic.com)",
            "CCBot/2.0 (https://commoncrawl.org/faq/)",
            "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0; +https://perplexity.ai/perplexitybot)",
        ] {
            match f.decide(&[ua]) {
                Decision::DenyMatched(hit) => assert_eq!(hit.source, "deny.presets[ai-crawlers]"),
                other => panic!("{ua}: {other:?}"),
            }
        }
        for ua in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "curl/8.5.0",
        ] {
            assert_eq!(f.decide(&[ua]), Decision::Pass, "{ua}");
        }
    }

    #[test]
    fn dry_run_lets_through_counts_and_logs() {
        let f = filter(r#"{"deny":{"contains":["GPTBot"]},"dry_run":true}"#);
        let (action, host) = run(&f, Some("GPTBot/1.0"));
        assert_eq!(action, Action::Continue);
        assert!(host.local_response.is_none());
        assert_eq!(host.counter(DENIED_TOTAL), 1);
        assert_eq!(host.counter(DRY_RUN_TOTAL), 1);
        assert_eq!(host.counter(ALLOWED_TOTAL), 0);
        let logs = host.logs.borrow();
        assert!(
            logs.iter().any(|(l, m)| *l == LogLevel::Info
                && m.contains("would deny")
                && m.contains("deny.contains \"GPTBot\"")
                && m.contains("\"GPTBot/1.0\"")),
            "{logs:?}"
        );
        drop(logs);
        let (action, host) = run(&f, Some("Firefox"));
        assert_eq!(action, Action::Continue);
        assert_eq!(host.counter(ALLOWED_TOTAL), 1);
        assert_eq!(host.counter(DRY_RUN_TOTAL), 0);
    }

    #[test]
    fn status_body_and_response_headers() {
        let f = filter(
            r#"{"deny":{"exact":["bad"]},"status":429,"body":"go away","response_headers":{"Content-Type":"text/html","x-blocked-by":"portcullis"}}"#,
        );
        let (_, host) = run(&f, Some("bad"));
        let resp = host.local_response.expect("local response");
        assert_eq!(resp.status, 429);
        assert_eq!(resp.body, b"go away");
        assert_eq!(
            resp.headers,
            vec![
                ("content-type".to_string(), "text/html".to_string()),
                ("x-blocked-by".to_string(), "portcullis".to_string())
            ]
        );
    }

    #[test]
    fn log_lines_escape_user_agent() {
        let f = filter(r#"{"deny":{"contains":["bad"]},"dry_run":true}"#);
        let ua = format!("bad\n[error] forged{}", "x".repeat(1000));
        let (_, host) = run(&f, Some(&ua));
        let logs = host.logs.borrow();
        let line = &logs
            .iter()
            .find(|(l, _)| *l == LogLevel::Info)
            .expect("dry-run log")
            .1;
        assert!(!line.contains('\n'), "{line}");
        assert!(line.len() < 600, "UA is cut: {} bytes", line.len());
    }

    #[test]
    fn empty_config_allows_everything() {
        for json in ["", "{}", "  "] {
            let f = filter(json);
            assert!(f.is_noop());
            assert_eq!(run(&f, Some("GPTBot")).0, Action::Continue);
            assert_eq!(run(&f, None).0, Action::Continue);
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"deny":{"contain":["x"]}}"#,
                "deny.contain: unknown field `contain`, expected one of `contains`",
            ),
            (r#"{"colour":1}"#, "colour: unknown field `colour`"),
            (
                r#"{"deny":{"regex":["ok","(x"]}}"#,
                "deny.regex[1]: invalid regex \"(x\": unclosed group",
            ),
            (
                r#"{"allow":{"regex":["["]}}"#,
                "allow.regex[0]: invalid regex \"[\"",
            ),
            (
                r#"{"status":"403"}"#,
                "status: invalid type: string \"403\", expected u16",
            ),
            (r#"{"status":99}"#, "status: 99 is not a valid status"),
            (r#"{"status":600}"#, "status: 600 is not a valid status"),
            (
                r#"{"status":70000}"#,
                "status: invalid value: integer `70000`",
            ),
            (
                r#"{"deny":{"contains":"GPTBot"}}"#,
                "deny.contains: invalid type: string \"GPTBot\", expected a sequence",
            ),
            (
                r#"{"deny":{"contains":["a",3]}}"#,
                "deny.contains[1]: invalid type: integer `3`",
            ),
            (
                r#"{"deny":{"presets":["ai-crawler"]}}"#,
                "deny.presets[0]: unknown preset \"ai-crawler\" (known: ai-crawlers)",
            ),
            (
                r#"{"deny":{"contains":[""]}}"#,
                "deny.contains[0]: empty pattern",
            ),
            (
                r#"{"deny":{"exact":["ok", " "]}}"#,
                "deny.exact[1]: empty pattern",
            ),
            (r#"{"deny":{"regex":[""]}}"#, "deny.regex[0]: empty pattern"),
            (
                r#"{"missing_user_agent":"block"}"#,
                "missing_user_agent: unknown variant `block`",
            ),
            (r#"{"dry_run":"yes"}"#, "dry_run: invalid type"),
            (
                r#"{"response_headers":{"bad name":"x"}}"#,
                "response_headers: invalid header name \"bad name\"",
            ),
            (
                r#"{"response_headers":{"x":"a\r\nb"}}"#,
                "response_headers: invalid value for header \"x\"",
            ),
            (r#"{"deny":"#, "deny: EOF while parsing"),
            (r#"[]"#, "config: expected a JSON object"),
        ];
        for (json, want) in cases {
            let e = err(json).to_string();
            assert!(
                e.starts_with(want),
                "config {json}\n got: {e}\nwant: {want}..."
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn many_patterns_compile() {
        let pats: Vec<String> = (0..5000).map(|i| format!("bot-{i}-x")).collect();
        let json = serde_json::json!({"deny": {"contains": pats}}).to_string();
        let f = filter(&json);
        assert!(f.decide(&["a BOT-4999-X b"]).is_deny());
        assert!(!f.decide(&["bot-5000-x"]).is_deny());
    }
}
