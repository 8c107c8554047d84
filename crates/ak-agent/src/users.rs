//! Resolves an exec's `user` field to numeric ids using the sandbox's own `/etc/passwd`.
//!
//! The agent is a static binary, so glibc's NSS (`getpwnam`) is not available, and it would
//! read the host's databases anyway if it were. The sandbox image's `/etc/passwd` is what
//! the command will see, so that file is parsed here directly.

/// The identity a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// The user's name and home directory when `/etc/passwd` knows the user.
    pub(crate) name: Option<String>,
    pub(crate) home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UserError {
    #[error("unknown user {0:?}: not in the sandbox's /etc/passwd")]
    Unknown(String),
    #[error("invalid group {0:?}: only numeric group ids are supported")]
    BadGroup(String),
    #[error("empty user name")]
    Empty,
}

/// One line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// Parses the well-formed lines of a passwd file; malformed lines and comments are skipped
/// the way libc skips them.
fn entries(passwd: &str) -> impl Iterator<Item = Entry<'_>> {
    passwd.lines().filter_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next().filter(|name| !name.is_empty())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let _gecos = fields.next()?;
        let home = fields.next()?;
        Some(Entry {
            name,
            uid,
            gid,
            home,
        })
    })
}

/// Resolves `spec` (`name`, `uid`, `name:gid` or `uid:gid`) against the passwd file content.
///
/// A numeric uid need not exist in passwd; its group is then the number of the uid, never
/// root's group 0, so that an unknown uid gains no privileges by accident.
pub(crate) fn resolve(spec: &str, passwd: &str) -> Result<User, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UserError::Empty);
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => entries(passwd).find(|entry| entry.uid == uid),
        Err(_) => entries(passwd).find(|entry| entry.name == user),
    };
    let mut resolved = match (entry, user.parse::<u32>()) {
        (Some(entry), _) => User {
            uid: entry.uid,
            gid: entry.gid,
            name: Some(entry.name.to_string()),
            home: Some(entry.home.to_string()).filter(|home| !home.is_empty()),
        },
        (None, Ok(uid)) => User {
            uid,
            gid: uid,
            name: None,
            home: None,
        },
        // Images without a passwd file still know root.
        (None, Err(_)) if user == "root" => User {
            uid: 0,
            gid: 0,
            name: Some("root".to_string()),
            home: Some("/root".to_string()),
        },
        (None, Err(_)) => return Err(UserError::Unknown(user.to_string())),
    };
    if let Some(group) = group {
        resolved.gid = group
            .parse()
            .map_err(|_| UserError::BadGroup(group.to_string()))?;
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment:x:5:5::/:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
dev:x:1000:100:Developer,,,:/home/dev:/bin/sh
badnum:x:abc:1::/:/bin/sh
";

    #[test]
    fn names_are_looked_up() {
        let dev = resolve("dev", PASSWD).unwrap();
        assert_eq!(
            dev,
            User {
                uid: 1000,
                gid: 100,
                name: Some("dev".into()),
                home: Some("/home/dev".into()),
            }
        );
        assert_eq!(resolve("nobody", PASSWD).unwrap().uid, 65534);
    }

    #[test]
    fn root_by_name_or_number_even_without_passwd() {
        for spec in ["root", "0"] {
            let root = resolve(spec, PASSWD).unwrap();
            assert_eq!((root.uid, root.gid), (0, 0));
            let root = resolve(spec, "").unwrap();
            assert_eq!((root.uid, root.gid), (0, 0));
        }
    }

    #[test]
    fn numeric_ids() {
        // Known uid: its passwd group.
        let dev = resolve("1000", PASSWD).unwrap();
        assert_eq!((dev.uid, dev.gid), (1000, 100));
        assert_eq!(dev.name.as_deref(), Some("dev"));
        // Unknown uid: group of the same number.
        let other = resolve("4242", PASSWD).unwrap();
        assert_eq!((other.uid, other.gid, other.name), (4242, 4242, None));
        // Explicit group wins.
        let pair = resolve("4242:7", PASSWD).unwrap();
        assert_eq!((pair.uid, pair.gid), (4242, 7));
        let named = resolve("dev:0", PASSWD).unwrap();
        assert_eq!((named.uid, named.gid), (1000, 0));
    }

    #[test]
    fn errors() {
        assert_eq!(
            resolve("ghost", PASSWD),
            Err(UserError::Unknown("ghost".into()))
        );
        // Comments and malformed lines are never matched.
        assert!(resolve("# a comment", PASSWD).is_err());
        assert!(resolve("badnum", PASSWD).is_err());
        assert_eq!(
            resolve("dev:staff", PASSWD),
            Err(UserError::BadGroup("staff".into()))
        );
        assert_eq!(resolve("", PASSWD), Err(UserError::Empty));
        assert_eq!(resolve(":5", PASSWD), Err(UserError::Empty));
    }
}
