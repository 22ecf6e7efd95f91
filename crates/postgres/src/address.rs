//! Where a store's data is, said without its credentials: the address in every error message
//! and in what the server prints at start-up.

use std::str::FromStr;

use tokio_postgres::config::Host;

/// `host:port/database` of a parsed configuration (every host, if it names several).
pub(crate) fn of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let database = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{hosts}/{database}")
}

/// The connection URL without its password (nor any query parameter, where one could be):
/// `postgres://user@host:port/database`, fit to be printed or logged.
pub fn redacted(url: &str) -> String {
    let (plain, ..) = crate::tls::take_parameters(url);
    if let Ok(config) = tokio_postgres::Config::from_str(&plain) {
        return match config.get_user() {
            Some(user) => format!("postgres://{user}@{}", of(&config)),
            None => format!("postgres://{}", of(&config)),
        };
    }
    // Unreadable: keep only what follows the last `@` (a password may hold a `/`), up to the
    // query.
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return "(a connection string that cannot be read)".to_owned();
    };
    // After the last `@` first: a password may hold a `?` too.
    let place = rest.rsplit('@').next().unwrap_or_default();
    let place = place.split('?').next().unwrap_or_default();
    format!("postgres://{place}")
}

/// The same URL naming another database.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={database}");
    };
    let (base, query) = match url.find('?') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let authority_start = base.rfind('@').map_or(scheme_end + 3, |at| at + 1);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    format!("{}/{database}{query}", &base[..authority_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_said_without_the_password() {
        let cases = [
            (
                "postgres://ann:s3cret@db.example:6543/chat",
                "postgres://ann@db.example:6543/chat",
            ),
            ("postgresql://ann@127.0.0.1/chat", "postgres://ann@127.0.0.1:5432/chat"),
            (
                "host=db port=5433 user=ann password=s3cret dbname=chat",
                "postgres://ann@db:5433/chat",
            ),
            ("postgres://ann:s3cret@db:notaport/chat", "postgres://db:notaport/chat"),
            ("postgres://ann:pa/ss@db/chat?password=x", "postgres://ann@db:5432/chat"),
            ("postgres://ann:pa/ss@db:x/chat?password=x", "postgres://db:x/chat"),
            (
                "postgres://ann:s3cret@db/chat?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgres://ann@db:5432/chat",
            ),
            ("postgres://ann:pa?ss@db:x/chat?sslmode=require", "postgres://db:x/chat"),
            ("not a url password=s3cret", "(a connection string that cannot be read)"),
        ];
        for (url, expected) in cases {
            assert_eq!(redacted(url), expected, "{url}");
        }
    }

    #[test]
    fn a_url_is_pointed_at_another_database() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u:p/w@h:1/db?sslmode=disable",
                "postgres://u:p/w@h:1/x?sslmode=disable",
            ),
            ("postgres://h", "postgres://h/x"),
            ("host=h user=u", "host=h user=u dbname=x"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "x"), expected, "{url}");
        }
    }
}
