//! URLs as they may be shown: in logs, errors, records and dead letters a URL never carries its
//! userinfo (`user:password@`) or its query string (where tokens often ride).

/// `text` (one URL, or several separated by commas) without userinfo, query or fragment.
pub fn url(text: &str) -> String {
    text.split(',')
        .map(|one| one_url(one.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` (an error message, say) with every URL in it shown as [`url`] shows it.
pub fn in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters just before "://".
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ']' | ','))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&one_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn one_url(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let mut out = String::new();
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    if text.contains('?') {
        out.push_str("?…");
    }
    out
}

/// Whether a header carries credentials, and so is never copied into a record, a dead letter
/// or a log: `Authorization`, cookies, and anything named like a key, token or secret.
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["key", "token", "secret", "password", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    #[test]
    fn userinfo_and_queries_never_show() {
        assert_eq!(
            super::url("nats://mcpq:s3cret@nats.svc:4222"),
            "nats://nats.svc:4222"
        );
        assert_eq!(
            super::url("https://api.example.com/mcp?token=abc#x"),
            "https://api.example.com/mcp?…"
        );
        assert_eq!(
            super::url("nats://a:b@n1:4222, nats://n2:4222"),
            "nats://n1:4222,nats://n2:4222"
        );
        assert_eq!(
            super::url("https://u:p@h/p@th"),
            "https://h/p@th",
            "an @ in the path is not userinfo"
        );
        assert_eq!(
            super::url("http://127.0.0.1:7400/mcp"),
            "http://127.0.0.1:7400/mcp"
        );
    }

    #[test]
    fn urls_inside_messages_are_shown_without_secrets() {
        assert_eq!(
            super::in_text(
                "error sending request for url (https://u:p@api.example.com/mcp?key=s3cret): refused"
            ),
            "error sending request for url (https://api.example.com/mcp?…): refused"
        );
        assert_eq!(super::in_text("no url here"), "no url here");
    }

    #[test]
    fn credential_headers_are_known() {
        for h in [
            "Authorization",
            "X-Api-Key",
            "x-auth-token",
            "Cookie",
            "X-Secret",
        ] {
            assert!(super::is_secret_header(h), "{h}");
        }
        for h in ["Mcpq-Job-Id", "Nats-Msg-Id", "traceparent", "Mcpq-Reply-To"] {
            assert!(!super::is_secret_header(h), "{h}");
        }
    }
}
