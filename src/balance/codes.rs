//! Sets of gRPC status codes: which codes count as an endpoint's failure (outlier
//! detection), which codes a retry policy retries.

use std::fmt;

use tonic::Code;

/// Every gRPC status code, in numeric order (0 to 16).
const ALL: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The canonical names of the codes, as gRPC's service config and `statuscodes.md` spell
/// them, in the order of [`ALL`].
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A set of gRPC status codes; `Copy`, one bit per code.
///
/// Built from an iterator of [`Code`]s (`[Code::Unavailable].into_iter().collect()`) or
/// with [`with`](CodeSet::with). Its `Debug` lists the canonical names:
/// `{INTERNAL, UNAVAILABLE}`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct CodeSet(u32);

impl CodeSet {
    /// The empty set.
    pub(crate) const EMPTY: CodeSet = CodeSet(0);

    /// This set and `code`.
    #[must_use]
    pub(crate) fn with(self, code: Code) -> Self {
        CodeSet(self.0 | bit(code))
    }

    /// This set without `code`.
    #[must_use]
    pub(crate) fn without(self, code: Code) -> Self {
        CodeSet(self.0 & !bit(code))
    }

    /// Whether `code` is in the set.
    pub(crate) fn contains(self, code: Code) -> bool {
        self.0 & bit(code) != 0
    }

    /// Whether the set has no code.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes in the set, in numeric order.
    pub(crate) fn iter(self) -> impl Iterator<Item = Code> {
        ALL.into_iter().filter(move |&code| self.contains(code))
    }
}

fn bit(code: Code) -> u32 {
    // `Code` is a fieldless enum of the values 0 to 16.
    1 << (code as i32 as u32)
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Code>>(codes: I) -> Self {
        codes.into_iter().fold(CodeSet::EMPTY, CodeSet::with)
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Name(Code);
        impl fmt::Debug for Name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(name(self.0))
            }
        }
        f.debug_set().entries(self.iter().map(Name)).finish()
    }
}

/// The canonical name of `code`: `UNAVAILABLE`, `DEADLINE_EXCEEDED`.
pub(crate) fn name(code: Code) -> &'static str {
    NAMES[code as i32 as usize]
}

/// The gRPC status code a name or number stands for, as a command line or a
/// configuration file gives it: the canonical name in any case, with `-` or `_`
/// (`UNAVAILABLE`, `deadline-exceeded`), tonic's variant name (`DeadlineExceeded`), or the
/// number (`14`). `None` for anything else. For
/// [`RetryPolicy::retryable_codes`](crate::RetryPolicy::retryable_codes) and
/// [`OutlierDetection::failure_codes`](crate::OutlierDetection::failure_codes).
///
/// ```
/// assert_eq!(tonic_etcd::parse_code("unavailable"), Some(tonic::Code::Unavailable));
/// assert_eq!(tonic_etcd::parse_code("4"), Some(tonic::Code::DeadlineExceeded));
/// assert_eq!(tonic_etcd::parse_code("17"), None);
/// ```
pub fn parse_code(text: &str) -> Option<Code> {
    let text = text.trim();
    if let Ok(number) = text.parse::<usize>() {
        return ALL.get(number).copied();
    }
    let wanted = |name: &str| {
        let mut given = text.chars().filter(|&c| c != '_' && c != '-');
        let mut canonical = name.chars().filter(|&c| c != '_');
        loop {
            match (given.next(), canonical.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
                _ => return false,
            }
        }
    };
    NAMES.iter().position(|name| wanted(name)).map(|i| ALL[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_the_codes_added() {
        let set: CodeSet = [Code::Unavailable, Code::Internal].into_iter().collect();
        assert!(set.contains(Code::Unavailable) && set.contains(Code::Internal));
        for code in ALL {
            if code != Code::Unavailable && code != Code::Internal {
                assert!(!set.contains(code), "{code:?}");
            }
        }
        let set = set.without(Code::Internal).with(Code::Ok);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Code::Ok, Code::Unavailable]
        );
        assert!(CodeSet::EMPTY.is_empty() && !set.is_empty());
    }

    #[test]
    fn names_follow_the_numbers() {
        for (number, code) in ALL.into_iter().enumerate() {
            assert_eq!(code as i32 as usize, number);
            assert_eq!(parse_code(&number.to_string()), Some(code));
            assert_eq!(parse_code(name(code)), Some(code));
        }
        assert_eq!(name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }

    #[test]
    fn reads_names_as_a_command_line_gives_them() {
        assert_eq!(parse_code("unavailable"), Some(Code::Unavailable));
        assert_eq!(
            parse_code(" deadline-exceeded "),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(parse_code("DeadlineExceeded"), Some(Code::DeadlineExceeded));
        assert_eq!(parse_code("DATA_LOSS"), Some(Code::DataLoss));
        assert_eq!(parse_code("17"), None);
        assert_eq!(parse_code("unavailabl"), None);
        assert_eq!(parse_code("unavailablee"), None);
        assert_eq!(parse_code(""), None);
    }

    #[test]
    fn debug_lists_the_names() {
        let set = CodeSet::EMPTY.with(Code::Internal).with(Code::Unavailable);
        assert_eq!(format!("{set:?}"), "{INTERNAL, UNAVAILABLE}");
    }
}
