//! Shared vocabulary of the controller and the workers.
//!
//! * [`protocol`]: every request and response body of the HTTP pull protocol, once.
//! * [`console`]: the bounded, numbered log-line buffer of workers and controller.
//! * [`commands`]: the typed command set a worker can be asked to run (Warp's names).
//! * [`preprocessing`]: parameters and results of the preprocessing commands.
//! * [`PROTOCOL_VERSION`]: checked at registration; a mismatch is refused loudly.
//!
//! This crate does no I/O: no sockets, no files, no clocks, no processes.

pub mod commands;
pub mod console;
pub mod preprocessing;
pub mod protocol;
pub mod tls;

/// Version of the wire protocol in [`protocol`]. Bump it on any incompatible change of a body or
/// of the meaning of a field; the controller refuses registrations that carry another number.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of this build (all crates of the workspace share it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest hostname a worker may register with, bytes (DNS names are at most 253).
pub const MAX_HOSTNAME: usize = 255;
/// Longest task label, bytes.
pub const MAX_LABEL: usize = 256;
/// Longest deregistration reason or progress message kept, bytes (longer ones are cut).
pub const MAX_REASON: usize = 1024;
/// Longest task error kept, bytes (longer ones are cut).
pub const MAX_ERROR: usize = 64 * 1024;

/// `s` cut to at most `max` bytes at a character boundary, with a note of what was cut.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

/// `s` for one log line: control characters escaped (`\n`, `\u{1b}`), so text a client sent
/// cannot forge log lines, and cut to `max` bytes.
pub fn for_log(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 8);
    for (i, c) in s.char_indices() {
        if out.len() >= max {
            out += &format!("… ({} more bytes)", s.len() - i);
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out += &format!("\\u{{{:x}}}", c as u32),
            c => out.push(c),
        }
    }
    out
}

/// Parses a duration in seconds as given on a command line ("30", "0.5", "1e-3").
///
/// Fractions are accepted so tests can shrink every interval to milliseconds. Negative, NaN and
/// infinite values are refused with a message naming the value.
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds (examples: 30, 0.5)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "'{text}' is not a valid number of seconds: it must be finite and >= 0"
        ));
    }
    if value > 1e9 {
        return Err(format!("'{text}' seconds is absurdly long (limit 1e9)"));
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

/// RFC 3339 UTC time with milliseconds ("2026-11-27T17:00:00.123Z") of `t` (the caller reads
/// the clock). No date crate needed.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let since_epoch = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant's algorithm), valid for the Unix era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme in any case).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_cannot_forge_lines_and_is_capped() {
        assert_eq!(
            for_log("a\nFORGED\r\t\u{1b}[31m", 100),
            "a\\nFORGED\\r\\t\\u{1b}[31m"
        );
        let long = "é".repeat(1000);
        let cut = for_log(&long, 10);
        assert_eq!(cut, "ééééé… (1990 more bytes)");
        assert_eq!(cap("short", 10), "short");
        let c = cap(&long, 5);
        assert!(c.starts_with("éé…") && c.contains("1996 more bytes"), "{c}");
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds("0.5").unwrap().as_millis(), 500);
        assert_eq!(parse_seconds("30").unwrap().as_secs(), 30);
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("ten").unwrap_err().contains("ten"));
    }

    #[test]
    fn timestamps_match_known_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |ms: u64| utc_timestamp(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_795_791_600_123), "2026-11-27T15:00:00.123Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
        assert!(constant_time_eq(b"", b""));
    }
}

/// Normalises a controller address given as `host:port`, `http://host:port`,
/// `https://host:port` or with a trailing slash; no scheme means `http://`. `https://` in a build
/// without the `tls` feature is refused with a message saying so.
pub fn normalize_controller_url(text: &str) -> Result<String, String> {
    let t = text.trim().trim_end_matches('/');
    if t.is_empty() {
        return Err("empty controller address (expected HOST:PORT or http(s)://HOST:PORT)".into());
    }
    let (scheme, rest) = match t.strip_prefix("https://") {
        Some(_) if !tls::TLS_BUILT => return Err(format!("'{text}': {}", tls::NO_TLS)),
        Some(rest) => ("https", rest),
        None => ("http", t.strip_prefix("http://").unwrap_or(t)),
    };
    if rest.contains('/') || !rest.contains(':') || rest.ends_with(':') {
        return Err(format!(
            "'{text}' is not a controller address (expected HOST:PORT or http(s)://HOST:PORT)"
        ));
    }
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod url_tests {
    use super::normalize_controller_url as n;

    #[test]
    fn controller_urls_are_normalised() {
        assert_eq!(n("127.0.0.1:80").unwrap(), "http://127.0.0.1:80");
        assert_eq!(n("http://node:8080/").unwrap(), "http://node:8080");
        assert!(n("node").is_err());
        if crate::tls::TLS_BUILT {
            assert_eq!(n("https://node:1/").unwrap(), "https://node:1");
        } else {
            assert!(n("https://node:1").unwrap_err().contains("tls"));
        }
        assert!(n("http://node:1/api").is_err());
    }
}
