//! The kernel command line: `key=value` words (QEMU's `-append`, `cargo run -- key=value`).
//!
//! Keys: `scenario=NAME` and `bench=NAME` choose what `cargo run` does, `test=TEXT` runs only
//! the tests whose names contain TEXT, `log=error|warn|info|debug|trace` sets the log level, and
//! `mechanism.tunable=value` sets a tunable ([`crate::tunables`]). Anything else is reported at
//! boot and ignored.

use crate::tunables;
use alloc::vec::Vec;
use spin::Once;

/// Keys that are not tunables.
const PLAIN_KEYS: &[(&str, &str)] = &[
    ("scenario", "run a named scenario instead of the demo"),
    ("bench", "run a named benchmark"),
    ("test", "run only tests whose name contains this text"),
    ("skip", "skip tests whose name contains this text"),
    ("log", "log level: error, warn, info, debug, trace"),
    (
        "console",
        "on: open the serial console's prompt after the demo",
    ),
];

pub struct Cmdline {
    words: Vec<(&'static str, &'static str)>,
}

static CMDLINE: Once<Cmdline> = Once::new();

impl Cmdline {
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.words
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// A problem with one word of the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum WordError<'a> {
    UnknownKey(&'a str),
    BadValue {
        key: &'a str,
        value: &'a str,
        reason: tunables::TunableError,
    },
}

/// Splits a command line into `key=value` pairs and the words that are not such pairs.
pub fn split(text: &str) -> (Vec<(&str, &str)>, Vec<&str>) {
    let mut pairs = Vec::new();
    let mut malformed = Vec::new();
    for word in text.split_ascii_whitespace() {
        match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => pairs.push((key, value)),
            _ => malformed.push(word),
        }
    }
    (pairs, malformed)
}

/// Checks one pair, applying it if it sets a tunable.
pub fn apply<'a>(key: &'a str, value: &'a str) -> Result<(), WordError<'a>> {
    if PLAIN_KEYS.iter().any(|(known, _)| *known == key) {
        if key == "log" {
            let level = value
                .parse::<log::LevelFilter>()
                .map_err(|_| WordError::BadValue {
                    key,
                    value,
                    reason: tunables::TunableError::NotANumber,
                })?;
            log::set_max_level(level);
        }
        return Ok(());
    }
    match tunables::set_from_str(key, value) {
        Ok(_) => Ok(()),
        Err(tunables::TunableError::Unknown) => Err(WordError::UnknownKey(key)),
        Err(reason) => Err(WordError::BadValue { key, value, reason }),
    }
}

/// Parses the boot command line once, applies the tunables and reports every bad word.
pub fn init(text: &'static str) -> &'static Cmdline {
    CMDLINE.call_once(|| {
        let (pairs, malformed) = split(text);
        for word in malformed {
            log::error!("command line: '{word}' is not key=value; ignored");
        }
        let mut words = Vec::new();
        for (key, value) in pairs {
            match apply(key, value) {
                Ok(()) => words.push((key, value)),
                Err(WordError::UnknownKey(key)) => {
                    log::error!(
                        "command line: unknown key '{key}' ignored (known: {})",
                        known_keys()
                    )
                }
                Err(WordError::BadValue { key, value, reason }) => {
                    log::error!(
                        "command line: {key}={value} refused ({reason}); keeping the default"
                    )
                }
            }
        }
        Cmdline { words }
    })
}

fn known_keys() -> alloc::string::String {
    let plain = PLAIN_KEYS.iter().map(|(key, _)| *key);
    let tunable = tunables::ALL.iter().map(|tunable| tunable.name);
    plain.chain(tunable).collect::<Vec<_>>().join(", ")
}

/// The parsed command line (empty before `init`).
pub fn get() -> &'static Cmdline {
    CMDLINE.call_once(|| Cmdline { words: Vec::new() })
}

/// Convenience: the value of `key`, if given.
pub fn value(key: &str) -> Option<&'static str> {
    get().get(key)
}
