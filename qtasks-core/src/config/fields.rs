//! How each field of [`QueueConfig`](super::QueueConfig) reads its text form (an environment
//! variable, `set_config`) or a native value (JSON), and what an error says it should have
//! been. One module per kind of field, for `#[serde(deserialize_with = "..")]`.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Visitor};

use crate::TaskStatus;

/// A field's value read from text (checked, as the environment's values are) or from a native
/// value (taken as given, as a struct literal's are), with the messages of a text that does
/// not parse and of one whose value the field does not take.
struct Lenient<T> {
    expected: &'static str,
    check: fn(&T) -> bool,
    refused: &'static str,
    kind: PhantomData<T>,
}

impl<T> Lenient<T> {
    fn accept<E: de::Error>(&self, value: Option<T>) -> Result<T, E> {
        value.ok_or_else(|| E::custom(self.expected))
    }
}

impl<'de, T: Native> Visitor<'de> for Lenient<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        let value = self.accept(T::from_text(text))?;
        if (self.check)(&value) {
            Ok(value)
        } else {
            Err(E::custom(self.refused))
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.accept(T::from_unit())
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        self.accept(T::from_bool(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        self.accept(T::from_u64(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        self.accept(T::from_i64(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        self.accept(T::from_f64(value))
    }
}

/// The native values a field's type takes besides its text form.
trait Native: Sized {
    fn from_text(text: &str) -> Option<Self>;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    /// JSON's `null`, which a non-finite float is written as.
    fn from_unit() -> Option<Self> {
        None
    }
}

macro_rules! whole_numbers {
    ($($ty:ty),*) => {$(
        impl Native for $ty {
            fn from_text(text: &str) -> Option<Self> {
                text.trim().parse().ok()
            }
            fn from_u64(value: u64) -> Option<Self> {
                value.try_into().ok()
            }
            fn from_i64(value: i64) -> Option<Self> {
                value.try_into().ok()
            }
        }
    )*};
}
whole_numbers!(usize, u64, u32, i64);

impl Native for f64 {
    fn from_text(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(value as f64)
    }
    fn from_i64(value: i64) -> Option<Self> {
        Some(value as f64)
    }
    fn from_f64(value: f64) -> Option<Self> {
        Some(value)
    }
    fn from_unit() -> Option<Self> {
        Some(f64::NAN)
    }
}

impl Native for bool {
    fn from_text(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        }
    }
    fn from_bool(value: bool) -> Option<Self> {
        Some(value)
    }
}

/// Statuses, comma-separated in text (the original splits its variable into characters).
#[derive(Debug)]
struct Statuses(Vec<TaskStatus>);

impl FromStr for Statuses {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        text.split(',')
            .map(|status| status.trim().parse().ok())
            .collect::<Option<_>>()
            .map(Statuses)
            .ok_or(())
    }
}

/// One module per kind of field (`#[serde(deserialize_with = "fields::<kind>::deserialize")]`):
/// its type, what its error says it should have been, and what else it must hold.
macro_rules! field_kinds {
    ($($kind:ident: $ty:ty = $expected:literal $(unless $check:expr => $refused:literal)?;)*) => {$(
        pub(super) mod $kind {
            pub(in crate::config) fn deserialize<'de, D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<$ty, D::Error> {
                deserializer.deserialize_any(super::Lenient::<$ty> {
                    expected: $expected,
                    check: field_kinds!(@check $($check)?),
                    refused: field_kinds!(@refused $expected $(, $refused)?),
                    kind: std::marker::PhantomData,
                })
            }
        }
    )*};
    (@check) => { |_| true };
    (@check $check:expr) => { $check };
    (@refused $expected:literal) => { $expected };
    (@refused $expected:literal, $refused:literal) => { $refused };
}

field_kinds! {
    whole_number: usize = "a whole number";
    integer: i64 = "an integer";
    whole_seconds: u64 = "a whole number of seconds";
    delivery_limit: u32 = "a whole number (0: no limit)";
    hand_back_limit: u32 = "a whole number";
    boolean: bool = "a boolean";
    positive_seconds: f64 = "a number of seconds"
        unless |seconds: &f64| seconds.is_finite() && *seconds > 0.0
            => "a positive number of seconds";
    non_negative_seconds: f64 = "a number of seconds"
        unless |seconds: &f64| seconds.is_finite() && *seconds >= 0.0
            => "a finite, non-negative number of seconds";
}

pub(super) mod statuses {
    use crate::TaskStatus;

    pub(in crate::config) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<TaskStatus>, D::Error> {
        // Text (the environment) is read here; a list (JSON) is read as statuses.
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = Vec<TaskStatus>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                text.parse::<super::Statuses>()
                    .map(|statuses| statuses.0)
                    .map_err(|()| E::custom(EXPECTED))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut statuses = Vec::new();
                while let Some(status) = seq.next_element()? {
                    statuses.push(status);
                }
                Ok(statuses)
            }
        }
        const EXPECTED: &str =
            "a comma-separated list of statuses (new, process, success, error, cancel, retry)";
        deserializer.deserialize_any(Either)
    }
}
