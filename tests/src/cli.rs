//! Command-line flags of the binaries that run inside pods (`shunt-testpod`, `shunt-loadgen`):
//! `--name value` pairs, and bare `--switch`es; a flag may be repeated ([`Flags::all`]).
//! Errors are usage messages.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// `--name value` pairs; a flag followed by another flag (or nothing) is a switch. Every
/// occurrence is kept, in order: single-valued readers take the last one.
#[derive(Debug, Default)]
pub struct Flags(HashMap<String, Vec<Option<String>>>);

impl Flags {
    /// Parses everything after the subcommand.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut flags: HashMap<String, Vec<Option<String>>> = HashMap::new();
        let mut iter = args.iter().peekable();
        while let Some(arg) = iter.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got {arg:?}"))?;
            let value = iter.next_if(|next| !next.starts_with("--")).cloned();
            flags.entry(name.to_owned()).or_default().push(value);
        }
        Ok(Self(flags))
    }

    /// Whether `--name` was given.
    #[must_use]
    pub fn switch(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// `--name VALUE` parsed, or `None` when absent.
    pub fn optional<T: FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: Display,
    {
        match self.0.get(name).and_then(|values| values.last()) {
            None => Ok(None),
            Some(raw) => Self::value(name, raw.as_deref()).map(Some),
        }
    }

    /// Every `--name VALUE` of a repeatable flag, parsed, in the order given; empty when
    /// absent.
    pub fn all<T: FromStr>(&self, name: &str) -> Result<Vec<T>, String>
    where
        T::Err: Display,
    {
        self.0.get(name).map_or_else(
            || Ok(Vec::new()),
            |values| {
                values
                    .iter()
                    .map(|raw| Self::value(name, raw.as_deref()))
                    .collect()
            },
        )
    }

    fn value<T: FromStr>(name: &str, raw: Option<&str>) -> Result<T, String>
    where
        T::Err: Display,
    {
        let raw = raw.ok_or_else(|| format!("--{name} needs a value"))?;
        raw.parse().map_err(|e| format!("--{name} {raw:?}: {e}"))
    }

    /// `--name VALUE` parsed; absent is an error.
    pub fn required<T: FromStr>(&self, name: &str) -> Result<T, String>
    where
        T::Err: Display,
    {
        self.optional(name)?
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// A number no larger than `max`; `default` when absent (`None`: required).
    pub fn number<T: FromStr + PartialOrd + Display>(
        &self,
        name: &str,
        default: Option<T>,
        max: T,
    ) -> Result<T, String>
    where
        T::Err: Display,
    {
        let value = match (self.optional(name)?, default) {
            (Some(value), _) | (None, Some(value)) => value,
            (None, None) => return Err(format!("--{name} is required")),
        };
        if value > max {
            return Err(format!("--{name} {value} is above {max}"));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Flags;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn values_switches_and_errors() {
        let flags = Flags::parse(&args("--to 10.0.0.1:80 --hold --bytes 12")).unwrap();
        assert!(flags.switch("hold"));
        assert!(!flags.switch("missing"));
        assert_eq!(flags.required::<u64>("bytes"), Ok(12));
        assert_eq!(flags.optional::<u64>("seed"), Ok(None));
        assert_eq!(
            flags.required::<u64>("seed"),
            Err("--seed is required".into())
        );
        assert_eq!(
            flags.required::<u64>("hold"),
            Err("--hold needs a value".into())
        );
        assert!(flags.required::<u64>("to").is_err());
        assert_eq!(flags.number::<u64>("bytes", None, 100), Ok(12));
        assert_eq!(flags.number::<u64>("seed", Some(3), 100), Ok(3));
        assert_eq!(
            flags.number::<u64>("bytes", None, 10),
            Err("--bytes 12 is above 10".into())
        );
        assert!(Flags::parse(&args("positional")).is_err());
    }

    #[test]
    fn repeated_flags_keep_every_value_and_single_readers_take_the_last() {
        let flags = Flags::parse(&args("--header a --size 1 --header b --size 2")).unwrap();
        assert_eq!(
            flags.all::<String>("header"),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(flags.required::<u64>("size"), Ok(2));
        assert_eq!(flags.all::<String>("missing"), Ok(Vec::new()));
        let flags = Flags::parse(&args("--header a --header")).unwrap();
        assert_eq!(
            flags.all::<String>("header"),
            Err("--header needs a value".into())
        );
        assert!(
            Flags::parse(&args("--n 1 --n x"))
                .unwrap()
                .all::<u64>("n")
                .is_err()
        );
    }
}
