//! Python literals read as JSON: the original's Kafka producer stores a task's `args` and
//! `kwargs` in its record as Python reprs (`str((2, 'x'))`, `str({'b': 5})`), not JSON, and its
//! message carries nothing else. What `ast.literal_eval` would read of such a repr, for the
//! values JSON has: numbers, strings, `True`, `False`, `None`, tuples, lists and dicts with
//! string keys. Anything else (a set, bytes, `nan`, an object's repr) is refused, with why.

use serde_json::{Map, Number, Value};

/// Reads one Python literal that is the whole of `text`.
pub(crate) fn parse(text: &str) -> Result<Value, String> {
    let mut reader = Reader {
        chars: text.char_indices().peekable(),
        text,
    };
    let value = reader.value(0)?;
    reader.skip_space();
    match reader.chars.next() {
        None => Ok(value),
        Some((at, c)) => Err(format!("`{c}` after the value, at {at}")),
    }
}

/// Containers nested deeper than this are refused (a repr is data from a record).
const DEEPEST: usize = 64;

struct Reader<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
}

impl Reader<'_> {
    fn skip_space(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > DEEPEST {
            return Err(format!("nested deeper than {DEEPEST}"));
        }
        self.skip_space();
        let Some(&(at, c)) = self.chars.peek() else {
            return Err("the text ends where a value should be".to_owned());
        };
        match c {
            '(' => self.sequence(')', depth).map(Value::Array),
            '[' => self.sequence(']', depth).map(Value::Array),
            '{' => self.dict(depth),
            '\'' | '"' => self.string().map(Value::String),
            '-' | '+' | '0'..='9' | '.' => self.number(),
            c if c.is_alphabetic() || c == '_' => {
                let word = self.word();
                match word {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::Null),
                    _ => Err(format!("`{word}` at {at} is not a literal JSON can hold")),
                }
            }
            _ => Err(format!("`{c}` at {at} starts no value")),
        }
    }

    fn word(&mut self) -> &str {
        let start = self.chars.peek().map_or(self.text.len(), |(at, _)| *at);
        let mut end = start;
        while let Some((at, c)) = self
            .chars
            .next_if(|(_, c)| c.is_alphanumeric() || *c == '_')
        {
            end = at + c.len_utf8();
        }
        &self.text[start..end]
    }

    /// The items of a tuple or a list, up to `close` (a trailing comma allowed).
    fn sequence(&mut self, close: char, depth: usize) -> Result<Vec<Value>, String> {
        self.chars.next();
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.chars.next_if(|(_, c)| *c == close).is_some() {
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.chars.next() {
                Some((_, ',')) => {}
                Some((_, c)) if c == close => return Ok(items),
                Some((at, c)) => return Err(format!("`{c}` at {at} where `,` or `{close}` was")),
                None => return Err(format!("the text ends before `{close}`")),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.chars.next();
        let mut map = Map::new();
        loop {
            self.skip_space();
            if self.chars.next_if(|(_, c)| *c == '}').is_some() {
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(key) => key,
                other => return Err(format!("a dict key {other} is not a string")),
            };
            self.skip_space();
            match self.chars.next() {
                Some((_, ':')) => {}
                // `{1, 2}` is a set.
                Some((at, c)) => return Err(format!("`{c}` at {at} where `:` was (a set?)")),
                None => return Err("the text ends before `:`".to_owned()),
            }
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            self.skip_space();
            match self.chars.next() {
                Some((_, ',')) => {}
                Some((_, '}')) => return Ok(Value::Object(map)),
                Some((at, c)) => return Err(format!("`{c}` at {at} where `,` or `}}` was")),
                None => return Err("the text ends before `}`".to_owned()),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let Some((start, quote)) = self.chars.next() else {
            return Err("no string".to_owned());
        };
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None => return Err(format!("the string at {start} never ends")),
                Some((_, c)) if c == quote => return Ok(out),
                Some((at, '\\')) => {
                    let Some((_, escaped)) = self.chars.next() else {
                        return Err(format!("a `\\` at {at} ends the text"));
                    };
                    match escaped {
                        '\\' | '\'' | '"' => out.push(escaped),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'a' => out.push('\u{7}'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'v' => out.push('\u{b}'),
                        'x' => out.push(self.code_point(2, at)?),
                        'u' => out.push(self.code_point(4, at)?),
                        'U' => out.push(self.code_point(8, at)?),
                        other => return Err(format!("the escape `\\{other}` at {at}")),
                    }
                }
                Some((_, c)) => out.push(c),
            }
        }
    }

    fn code_point(&mut self, digits: usize, at: usize) -> Result<char, String> {
        let mut code = 0u32;
        for _ in 0..digits {
            let digit = self
                .chars
                .next()
                .and_then(|(_, c)| c.to_digit(16))
                .ok_or_else(|| format!("the escape at {at} needs {digits} hex digits"))?;
            code = code * 16 + digit;
        }
        char::from_u32(code).ok_or_else(|| format!("the escape at {at} is no character"))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.chars.peek().map_or(self.text.len(), |(at, _)| *at);
        let mut end = start;
        while let Some((at, c)) = self
            .chars
            .next_if(|(_, c)| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E' | '_'))
        {
            end = at + c.len_utf8();
        }
        let digits = self.text[start..end].replace('_', "");
        if let Ok(int) = digits.parse::<i64>() {
            return Ok(Value::Number(int.into()));
        }
        if let Ok(int) = digits.parse::<u64>() {
            return Ok(Value::Number(int.into()));
        }
        digits
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("`{digits}` at {start} is not a number JSON can hold"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reprs_read_as_json() {
        assert_eq!(parse("(2,)").unwrap(), json!([2]));
        assert_eq!(parse("()").unwrap(), json!([]));
        assert_eq!(parse("{'b': 5}").unwrap(), json!({"b": 5}));
        assert_eq!(parse("{}").unwrap(), json!({}));
        assert_eq!(
            parse(r#"('мир ✓', "it's", 'a\'b\\c\n', -1.5e-05, True, None, [1, (2, 3)])"#).unwrap(),
            json!([
                "мир ✓",
                "it's",
                "a'b\\c\n",
                -1.5e-05,
                true,
                null,
                [1, [2, 3]]
            ])
        );
        assert_eq!(parse(r"'\x41\u00e9\U0001F600'").unwrap(), json!("Aé😀"));
        assert_eq!(parse("18446744073709551615").unwrap(), json!(u64::MAX));
    }

    #[test]
    fn what_json_cannot_hold_is_refused_with_why() {
        for (text, says) in [
            ("{'a', 'b'}", "a set?"),
            ("(nan,)", "not a literal"),
            ("(inf,)", "not a literal"),
            ("(1e999,)", "not a number"),
            ("b'x'", "not a literal"),
            ("<object at 0x7f>", "starts no value"),
            ("(1, 2", "ends before"),
            ("'open", "never ends"),
            ("(1,) extra", "after the value"),
            ("{1: 2}", "not a string"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(
                error.contains(says),
                "{text}: {error:?} should say {says:?}"
            );
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).unwrap_err().contains("deeper"));
    }
}
