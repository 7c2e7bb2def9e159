//! The kernel command line: `key=value` words (QEMU's `-append`, `cargo run -- key=value`).
//!
//! Keys: `scenario=NAME` and `bench=NAME` choose what `cargo run` does, `test=TEXT` runs only
//! the tests whose names contain TEXT, `log=off|error|warn|info|debug|trace` sets the log level,
//! `console=on` opens the prompt, and `mechanism.tunable=value` sets a tunable
//! ([`crate::tunables`]). Anything else (a word that is not UTF-8 or not `key=value`, an unknown
//! key, a bad value) is reported at boot with what is valid, and ignored: the other words count.

use crate::tunables;
use alloc::vec::Vec;
use spin::Once;

/// Keys that are not tunables.
const PLAIN_KEYS: &[(&str, &str)] = &[
    ("scenario", "run a named scenario instead of the demo"),
    ("bench", "run a named benchmark"),
    ("test", "run only tests whose name contains this text"),
    ("skip", "skip tests whose name contains this text"),
    ("log", "log level: off, error, warn, info, debug, trace"),
    (
        "console",
        "on: open the serial console's prompt after the demo",
    ),
];

/// The values `log=` takes.
pub const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
/// The values `console=` takes (without it, there is no prompt).
pub const CONSOLE_VALUES: &[&str] = &["on"];

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
    /// The word is not valid UTF-8: `offset` is its first bad byte.
    NotUtf8 {
        word: &'a [u8],
        offset: usize,
    },
    NotKeyValue(&'a str),
    UnknownKey(&'a str),
    BadValue {
        key: &'a str,
        value: &'a str,
        reason: tunables::TunableError,
    },
    /// A key that takes one of a few words, given another.
    NotOneOf {
        key: &'a str,
        value: &'a str,
        valid: &'static [&'static str],
    },
}

impl core::fmt::Display for WordError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NotUtf8 { word, offset } => write!(
                f,
                "'{}' is not valid UTF-8 (byte {:#04x} at offset {offset}); ignored",
                word.escape_ascii(),
                word[*offset]
            ),
            Self::NotKeyValue(word) => write!(f, "'{word}' is not key=value; ignored"),
            Self::UnknownKey(key) => {
                write!(f, "unknown key '{key}' ignored (known: {})", known_keys())
            }
            Self::BadValue { key, value, reason } => {
                write!(f, "{key}={value} refused ({reason}); keeping the default")
            }
            Self::NotOneOf { key, value, valid } => write!(
                f,
                "{key}={value} refused (valid: {}); keeping the default",
                valid.join(", ")
            ),
        }
    }
}

/// Splits a command line into `key=value` pairs; every other word (not UTF-8, not `key=value`)
/// becomes a [`WordError`]. Words are separated by ASCII whitespace; a bad word costs only
/// itself.
pub fn split(text: &[u8]) -> (Vec<(&str, &str)>, Vec<WordError<'_>>) {
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for word in text
        .split(|byte| byte.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
    {
        let word = match core::str::from_utf8(word) {
            Ok(word) => word,
            Err(error) => {
                problems.push(WordError::NotUtf8 {
                    word,
                    offset: error.valid_up_to(),
                });
                continue;
            }
        };
        match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => pairs.push((key, value)),
            _ => problems.push(WordError::NotKeyValue(word)),
        }
    }
    (pairs, problems)
}

/// Checks one pair, applying it if it sets a tunable or the log level.
pub fn apply<'a>(key: &'a str, value: &'a str) -> Result<(), WordError<'a>> {
    if PLAIN_KEYS.iter().any(|(known, _)| *known == key) {
        match key {
            "log" => {
                // `log` parses exactly these names, in any case.
                let level = value
                    .parse::<log::LevelFilter>()
                    .map_err(|_| WordError::NotOneOf {
                        key,
                        value,
                        valid: LOG_LEVELS,
                    })?;
                log::set_max_level(level);
            }
            "console" if !CONSOLE_VALUES.contains(&value) => {
                return Err(WordError::NotOneOf {
                    key,
                    value,
                    valid: CONSOLE_VALUES,
                });
            }
            _ => {}
        }
        return Ok(());
    }
    match tunables::set_from_str(key, value) {
        Ok(_) => Ok(()),
        Err(tunables::TunableError::Unknown) => Err(WordError::UnknownKey(key)),
        Err(reason) => Err(WordError::BadValue { key, value, reason }),
    }
}

/// Parses the boot command line once, applies the tunables and reports every bad word; the
/// good words count. `truncated`: the line was longer than the boot buffer, so its last word
/// is cut (reported and dropped).
pub fn init(text: &'static [u8], truncated: bool) -> &'static Cmdline {
    CMDLINE.call_once(|| {
        let text = if truncated {
            log::error!(
                "command line: longer than the {} bytes the PVH boot buffer holds; cut there, its last word dropped",
                boot::MAX_CMDLINE - 1
            );
            let last_space = text.iter().rposition(|byte| byte.is_ascii_whitespace());
            &text[..last_space.unwrap_or(0)]
        } else {
            text
        };
        // Each message is formatted before it is logged: formatting some (the known keys, the
        // valid values) allocates, which must not happen under the serial port's lock.
        let (pairs, problems) = split(text);
        for problem in problems {
            let message = alloc::format!("{problem}");
            log::error!("command line: {message}");
        }
        let mut words = Vec::new();
        for (key, value) in pairs {
            match apply(key, value) {
                Ok(()) => words.push((key, value)),
                Err(problem) => {
                    let message = alloc::format!("{problem}");
                    log::error!("command line: {message}");
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
