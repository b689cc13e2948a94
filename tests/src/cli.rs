//! Command-line flags of the binaries that run inside pods (`shunt-testpod`, `shunt-loadgen`):
//! `--name value` pairs, and bare `--switch`es. Errors are usage messages.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// `--name value` pairs; a flag followed by another flag (or nothing) is a switch.
#[derive(Debug, Default)]
pub struct Flags(HashMap<String, Option<String>>);

impl Flags {
    /// Parses everything after the subcommand.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut flags = HashMap::new();
        let mut iter = args.iter().peekable();
        while let Some(arg) = iter.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got {arg:?}"))?;
            let value = iter.next_if(|next| !next.starts_with("--")).cloned();
            flags.insert(name.to_owned(), value);
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
        match self.0.get(name) {
            None => Ok(None),
            Some(None) => Err(format!("--{name} needs a value")),
            Some(Some(raw)) => raw
                .parse()
                .map(Some)
                .map_err(|e| format!("--{name} {raw:?}: {e}")),
        }
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
}
