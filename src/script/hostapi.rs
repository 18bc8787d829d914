//! The host API: the only functions a script gets beyond Rhai's standard library.
//!
//! They are pure constructors and helpers. A script never *does* anything: it returns
//! data (an init plan, a list of guest-agent actions, a score) and corral acts on it, inside
//! the guest it concerns, through the guest agent or the seed. So the API has nothing that
//! reads or writes the host.
//!
//! | function                         | returns                                         |
//! |----------------------------------|-------------------------------------------------|
//! | `write_file(path, content)`      | action: write `content` to `path`, mode 0644    |
//! | `write_file(path, content, mode)`| the same with an octal mode string, e.g. "0600" |
//! | `append_file(path, content)`     | action: append `content` to `path`              |
//! | `exec(command)`                  | action: run `sh -c command` in the guest        |
//! | `set_password(user, hash)`       | action: set a user's password from a crypt hash |
//! | `netmask(prefix)`                | "255.255.255.0" for 24                          |
//! | `shell_quote(text)`              | `text` quoted for `sh`                          |
//! | `b64(text)`                      | `text` in base64                                |

use base64::Engine as _;
use rhai::{Engine, Map};

pub fn register(engine: &mut Engine) {
    engine
        .register_fn("write_file", |path: &str, content: &str| {
            write(path, content, "0644", false)
        })
        .register_fn("write_file", |path: &str, content: &str, mode: &str| {
            write(path, content, mode, false)
        })
        .register_fn("append_file", |path: &str, content: &str| {
            write(path, content, "0644", true)
        })
        .register_fn("exec", |command: &str| {
            let mut m = Map::new();
            m.insert("type".into(), "exec".into());
            m.insert("command".into(), command.into());
            m
        })
        .register_fn("set_password", |user: &str, hash: &str| {
            let mut m = Map::new();
            m.insert("type".into(), "set_password".into());
            m.insert("user".into(), user.into());
            m.insert("password_hash".into(), hash.into());
            m
        })
        .register_fn("netmask", netmask)
        .register_fn("shell_quote", shell_quote)
        .register_fn("b64", |s: &str| {
            base64::engine::general_purpose::STANDARD.encode(s)
        });
}

fn write(path: &str, content: &str, mode: &str, append: bool) -> Map {
    let mut m = Map::new();
    m.insert("type".into(), "write_file".into());
    m.insert("path".into(), path.into());
    m.insert("content".into(), content.into());
    m.insert("mode".into(), mode.into());
    m.insert("append".into(), append.into());
    m
}

/// The dotted netmask of a prefix length (out-of-range prefixes are clamped).
pub fn netmask(prefix: i64) -> String {
    let p = prefix.clamp(0, 32) as u32;
    let bits: u32 = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    std::net::Ipv4Addr::from(bits).to_string()
}

/// `text` as one `sh` word: single quotes, with each `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_and_quote() {
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(28), "255.255.255.240");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(40), "255.255.255.255");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
