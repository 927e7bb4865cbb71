//! Target databases: the PostgreSQL databases agents work on, registered
//! by name. A target's connection URL may carry a password; it is kept
//! only where connections are made (the `target_databases` table) and
//! everything else (events, logs, errors, answers) sees it masked.

use std::fmt;

pub const TARGET_NAME_BYTES_MAX: usize = 63;
pub const TARGET_URL_BYTES_MAX: usize = 2048;
/// What a password is replaced with.
pub const MASK: &str = "***";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "target name '{0}' must be 1..=63 of lower-case ASCII letters, digits and _, starting with a letter"
    )]
    Name(String),
    #[error("target url {masked}: {why}")]
    Url { masked: String, why: String },
}

/// A target's name: an identifier, so it is safe in subjects, stream ids
/// and messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetName(String);

impl TargetName {
    pub fn parse(name: &str) -> Result<TargetName, TargetError> {
        let ok = !name.is_empty()
            && name.len() <= TARGET_NAME_BYTES_MAX
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(TargetName(name.to_owned()))
        } else {
            Err(TargetError::Name(name.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `postgres://` or `postgresql://` URL. `Display` and `Debug` show it
/// masked; only [`ConnectionUrl::expose`] gives the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl {
    url: String,
    /// The password as written in the URL (percent-encoded), if any.
    password: Option<String>,
}

impl ConnectionUrl {
    pub fn parse(url: &str) -> Result<ConnectionUrl, TargetError> {
        let password = password_of(url);
        let parsed = ConnectionUrl {
            url: url.to_owned(),
            password,
        };
        let fail = |why: &str| TargetError::Url {
            masked: parsed.masked(),
            why: why.to_owned(),
        };
        if url.len() > TARGET_URL_BYTES_MAX {
            return Err(fail(&format!("longer than {TARGET_URL_BYTES_MAX} bytes")));
        }
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            return Err(fail("must start with postgres:// or postgresql://"));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() {
            return Err(fail(
                "names no host (postgres://user:password@host:port/database)",
            ));
        }
        let after_host = &rest[authority.len()..];
        let database = after_host
            .strip_prefix('/')
            .and_then(|path| path.split('?').next())
            .unwrap_or_default();
        if database.is_empty() {
            return Err(fail(
                "names no database (postgres://user:password@host:port/database)",
            ));
        }
        if url.chars().any(char::is_whitespace) {
            return Err(fail("contains white space"));
        }
        Ok(parsed)
    }

    /// The URL with the password replaced by `***`.
    pub fn masked(&self) -> String {
        mask(&self.url, self.password.as_deref())
    }

    /// The URL itself, to connect with. Nothing else should see it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL without its password, and the password (percent-decoded):
    /// for client tools (pg_dump, pg_restore), which get the password in
    /// their environment rather than on a command line others can read.
    pub fn for_client_tool(&self) -> (String, Option<String>) {
        match &self.password {
            Some(password) => (
                self.url.replacen(&format!(":{password}@"), "@", 1),
                Some(percent_decode(password)),
            ),
            None => (self.url.clone(), None),
        }
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> ConnectionUrl {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("postgres", &self.url));
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let query = rest
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        ConnectionUrl {
            url: format!("{scheme}://{authority}/{}{query}", percent_encode(database)),
            password: self.password.clone(),
        }
    }

    /// `text` (an error message, say) with this URL's password masked.
    pub fn scrub(&self, text: &str) -> String {
        mask(text, self.password.as_deref())
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({})", self.masked())
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The password between `user:` and `@` in the authority, if any.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

fn mask(text: &str, password: Option<&str>) -> String {
    let mut masked = match password {
        Some(password) => text.replace(&format!(":{password}@"), &format!(":{MASK}@")),
        None => text.to_owned(),
    };
    // A password given as a parameter (?password=...) too.
    if let Some(start) = masked.find("password=") {
        let value_start = start + "password=".len();
        let value_end = masked[value_start..]
            .find(['&', ' ', '\''])
            .map_or(masked.len(), |i| value_start + i);
        masked.replace_range(value_start..value_end, MASK);
    }
    if let Some(password) = password
        && password.len() >= 4
    {
        masked = masked.replace(password, MASK);
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shows_its_password_masked_everywhere_but_expose() {
        let url =
            ConnectionUrl::parse("postgres://app:s3cret-pw@db.internal:5432/app?sslmode=disable").unwrap();
        assert_eq!(
            url.masked(),
            "postgres://app:***@db.internal:5432/app?sslmode=disable"
        );
        assert_eq!(url.to_string(), url.masked());
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(url.expose().contains("s3cret-pw"));
        assert_eq!(
            url.scrub("connect failed for app with s3cret-pw"),
            "connect failed for app with ***"
        );
    }

    #[test]
    fn client_tools_get_the_url_without_its_password_and_the_password_decoded() {
        let url = ConnectionUrl::parse("postgres://app:p%40ss@db:5432/app?sslmode=disable").unwrap();
        let (bare, password) = url.for_client_tool();
        assert_eq!(bare, "postgres://app@db:5432/app?sslmode=disable");
        assert_eq!(password.as_deref(), Some("p@ss"));
        let other = url.with_database("app restore");
        assert_eq!(
            other.expose(),
            "postgres://app:p%40ss@db:5432/app%20restore?sslmode=disable"
        );
        assert!(!other.to_string().contains("p%40ss"));
    }

    #[test]
    fn a_password_parameter_is_masked_too() {
        let url =
            ConnectionUrl::parse("postgresql://app@localhost/app?password=hunter22&sslmode=require").unwrap();
        assert_eq!(
            url.masked(),
            "postgresql://app@localhost/app?password=***&sslmode=require"
        );
    }

    #[test]
    fn bad_urls_are_refused_masked_with_the_reason() {
        let refused = |url: &str| ConnectionUrl::parse(url).unwrap_err().to_string();
        assert!(refused("mysql://root:pw12345@h/db").contains("must start with postgres://"));
        assert!(!refused("mysql://root:pw12345@h/db").contains("pw12345"));
        assert!(refused("postgres://u:pw12345@h:5432").contains("names no database"));
        assert!(refused("postgres:///db").contains("names no host"));
        assert!(refused("postgres://u@h/d b").contains("white space"));
    }

    #[test]
    fn names_are_identifiers() {
        assert!(TargetName::parse("app_db2").is_ok());
        for bad in ["", "App", "2db", "a-b", "a.b", &"x".repeat(64)] {
            assert!(TargetName::parse(bad).is_err(), "{bad}");
        }
    }
}
