//! Parsing and validating `#[qtasks::task(..)]` and the fn it is on.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::{Expr, FnArg, Ident, ItemFn, LitStr, Pat, Token, Type};

use crate::errors::Errors;

/// The options the attribute accepts.
const OPTIONS: &[&str] = &[
    "name",
    "echo",
    "priority",
    "tags",
    "description",
    "retry",
    "retry_on_exc",
    "retry_delay",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "max_time",
    "timeout",
    "result_ttl",
    "unique_for",
    "rate_limit",
    "max_running",
    "decode",
    "generate_handler",
    "middlewares_before",
    "middlewares_after",
    "router",
    "queue",
    "executor",
    "cron",
];

#[derive(Default)]
pub(crate) struct TaskOptions {
    pub(crate) name: Option<LitStr>,
    pub(crate) echo: bool,
    pub(crate) priority: Option<Expr>,
    pub(crate) tags: Vec<LitStr>,
    pub(crate) description: Option<LitStr>,
    pub(crate) retry: Option<Expr>,
    pub(crate) retry_on_exc: Vec<Type>,
    pub(crate) retry_delay: Option<Expr>,
    pub(crate) retry_exponential: bool,
    /// `retry_backoff_max`, in seconds.
    pub(crate) retry_backoff_max: Option<Expr>,
    /// `retry_jitter`, a fraction from 0 to 1.
    pub(crate) retry_jitter: Option<Expr>,
    pub(crate) max_time: Option<Expr>,
    /// `result_ttl`, in seconds.
    pub(crate) result_ttl: Option<Expr>,
    /// `unique_for`, in seconds.
    pub(crate) unique_for: Option<Expr>,
    /// `rate_limit`, read here: starts and the period in seconds.
    pub(crate) rate_limit: Option<(u32, f64)>,
    /// `max_running`: a count at least 1.
    pub(crate) max_running: Option<Expr>,
    pub(crate) decode: Option<Expr>,
    pub(crate) generate_handler: Option<Expr>,
    pub(crate) middlewares_before: Vec<Expr>,
    pub(crate) middlewares_after: Vec<Expr>,
    pub(crate) router: Option<LitStr>,
    /// The named queue the task's calls wait in, checked here.
    pub(crate) queue: Option<LitStr>,
    pub(crate) executor: Option<Expr>,
    /// A cron expression, checked here (so a bad one does not compile).
    pub(crate) cron: Option<LitStr>,
}

/// A parameter: filled from the task's arguments, or (an extractor: `Depends<T>`, `State<T>`)
/// by the executor.
pub(crate) struct Param {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
    pub(crate) extractor: bool,
}

/// Everything the emitter needs, validated.
pub(crate) struct Task {
    pub(crate) options: TaskOptions,
    pub(crate) function: ItemFn,
    /// The context parameter's type, when `echo = true`.
    pub(crate) context: Option<Type>,
    pub(crate) params: Vec<Param>,
}

impl Task {
    pub(crate) fn name(&self) -> String {
        self.options
            .name
            .as_ref()
            .map_or_else(|| self.function.sig.ident.to_string(), LitStr::value)
    }
}

pub(crate) fn parse_options(args: TokenStream, errors: &mut Errors) -> TaskOptions {
    let mut options = TaskOptions::default();
    let mut seen: Vec<String> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        if seen.contains(&key) {
            errors.spanned(&meta.path, format!("`{key}` is given more than once"));
        }
        seen.push(key.clone());
        match key.as_str() {
            "name" => {
                let name: LitStr = meta.value()?.parse()?;
                check_name(&name, errors);
                options.name = Some(name);
            }
            "echo" => {
                // A bare `echo` means `echo = true`.
                options.echo = if meta.input.peek(Token![=]) {
                    match meta.value()?.parse::<Expr>()? {
                        Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Bool(flag),
                            ..
                        }) => flag.value,
                        other => {
                            errors.spanned(other, "`echo` takes `true` or `false`");
                            // Assume the user meant to turn it on, so the fn is checked
                            // against that and no second error follows from this one.
                            true
                        }
                    }
                } else {
                    true
                };
            }
            "priority" => options.priority = Some(meta.value()?.parse()?),
            "tags" => {
                let list: Expr = meta.value()?.parse()?;
                options.tags = parse_tags(&list, errors);
            }
            "description" => options.description = Some(meta.value()?.parse()?),
            "retry" => options.retry = Some(meta.value()?.parse()?),
            "retry_on_exc" => {
                let list: Expr = meta.value()?.parse()?;
                options.retry_on_exc = parse_types(&list, errors);
            }
            "retry_delay" => {
                let delay: Expr = meta.value()?.parse()?;
                options.retry_delay = Some(seconds_of(delay, "retry_delay", errors));
            }
            "retry_backoff_max" => {
                let max: Expr = meta.value()?.parse()?;
                options.retry_backoff_max = Some(seconds_of(max, "retry_backoff_max", errors));
            }
            "retry_jitter" => {
                let jitter: Expr = meta.value()?.parse()?;
                check_fraction(&jitter, "retry_jitter", errors);
                options.retry_jitter = Some(jitter);
            }
            "retry_backoff" => {
                let kind: LitStr = meta.value()?.parse()?;
                match kind.value().as_str() {
                    "fixed" => options.retry_exponential = false,
                    "exponential" => options.retry_exponential = true,
                    other => errors.spanned(
                        &kind,
                        format!("`retry_backoff` is \"fixed\" or \"exponential\", not \"{other}\""),
                    ),
                }
            }
            "max_time" | "timeout" => {
                if options.max_time.is_some() {
                    errors.spanned(
                        &meta.path,
                        "`max_time` and `timeout` are the same option; give one",
                    );
                }
                let written = if meta.path.is_ident("timeout") {
                    "timeout"
                } else {
                    "max_time"
                };
                let limit: Expr = meta.value()?.parse()?;
                options.max_time = Some(seconds_of(limit, written, errors));
            }
            "result_ttl" => {
                let ttl = seconds_of(meta.value()?.parse()?, "result_ttl", errors);
                if literal_seconds(&ttl) == Some(0.0) {
                    errors.spanned(
                        &ttl,
                        "`result_ttl` must be more than 0: a record kept for no time could not be read\n= help: give how long to keep it, like `result_ttl = \"1h\"`, or leave the option out for the engine's retention",
                    );
                }
                options.result_ttl = Some(ttl);
            }
            "unique_for" => {
                let window = seconds_of(meta.value()?.parse()?, "unique_for", errors);
                if literal_seconds(&window) == Some(0.0) {
                    errors.spanned(
                        &window,
                        "`unique_for` must be more than 0: it is how long one call per arguments holds\n= help: give the window, like `unique_for = \"10m\"`, or leave the option out (`AddOptions::unique` takes a key of your own)",
                    );
                }
                options.unique_for = Some(window);
            }
            "rate_limit" => {
                let value: Expr = meta.value()?.parse()?;
                let Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(rate),
                    ..
                }) = &value
                else {
                    errors.spanned(
                        &value,
                        "`rate_limit` is a string of starts per period, like `rate_limit = \"100/s\"` or `rate_limit = \"5/10s\"`",
                    );
                    return Ok(());
                };
                match parse_rate(&rate.value()) {
                    Ok(rate) => options.rate_limit = Some(rate),
                    Err(problem) => errors.spanned(
                        rate,
                        format!(
                            "`rate_limit = {:?}` is not a rate: {problem}\n= help: write starts per period, like \"100/s\", \"60/m\", \"1000/h\" or \"5/10s\"",
                            rate.value()
                        ),
                    ),
                }
            }
            "max_running" => {
                let max: Expr = meta.value()?.parse()?;
                check_max_running(&max, errors);
                options.max_running = Some(max);
            }
            "decode" => options.decode = Some(meta.value()?.parse()?),
            "generate_handler" => options.generate_handler = Some(meta.value()?.parse()?),
            "middlewares_before" => {
                let list: Expr = meta.value()?.parse()?;
                options.middlewares_before = parse_list(&list, "middlewares_before", errors);
            }
            "middlewares_after" => {
                let list: Expr = meta.value()?.parse()?;
                options.middlewares_after = parse_list(&list, "middlewares_after", errors);
            }
            "router" => options.router = Some(meta.value()?.parse()?),
            "queue" => {
                let queue: LitStr = meta.value()?.parse()?;
                check_queue(&queue, errors);
                options.queue = Some(queue);
            }
            "executor" => options.executor = Some(meta.value()?.parse()?),
            "cron" => {
                let expression: LitStr = meta.value()?.parse()?;
                check_cron(&expression, errors);
                options.cron = Some(expression);
            }
            other => {
                // Read the value, if any, so the remaining options are still checked.
                if meta.input.peek(Token![=]) {
                    let _: Expr = meta.value()?.parse()?;
                }
                let mut message = format!("unknown option `{other}` of `#[qtasks::task]`");
                if let Some(close) = qtasks_triggers::closest(other, OPTIONS.iter().copied()) {
                    message.push_str(&format!("\n= help: did you mean `{close}`?"));
                }
                message.push_str(&format!(
                    "\n= note: the options are: {}",
                    OPTIONS.join(", ")
                ));
                errors.spanned(&meta.path, message);
            }
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        errors.push(error);
    }
    if let Some(max) = &options.retry_backoff_max
        && !options.retry_exponential
    {
        errors.spanned(
            max,
            "`retry_backoff_max` caps a backoff that doubles\n= help: add `retry_backoff = \"exponential\"`, or drop `retry_backoff_max`",
        );
    }
    options
}

/// A number of seconds written as a literal must be finite and not negative (a `const` or
/// another expression is checked when the task is registered).
/// A span of time as the attribute accepts it: a number of seconds (`2.5`, a `const`), as the
/// original writes it, or a string with units (`"500ms"`, `"30s"`, `"10m"`, `"1h30m"`), turned
/// into seconds here so a misspelt one does not compile.
fn seconds_of(value: Expr, option: &str, errors: &mut Errors) -> Expr {
    if let Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(text),
        ..
    }) = &value
    {
        return match parse_duration(&text.value()) {
            Ok(seconds) => {
                let mut literal = proc_macro2::Literal::f64_suffixed(seconds);
                literal.set_span(text.span());
                syn::parse_quote!(#literal)
            }
            Err(problem) => {
                errors.spanned(
                    text,
                    format!(
                        "`{option} = {:?}` is not a duration: {problem}\n= help: write a number of seconds (`{option} = 2.5`) or a duration with units, like \"500ms\", \"30s\", \"10m\", \"1h30m\" or \"1d\"",
                        text.value()
                    ),
                );
                syn::parse_quote!(0.0)
            }
        };
    }
    check_seconds(&value, option, errors);
    value
}

/// The number a literal (`2.5`, `30`) holds, if the expression is one.
fn literal_seconds(value: &Expr) -> Option<f64> {
    match value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(int),
            ..
        }) => int.base10_parse().ok(),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Float(float),
            ..
        }) => float.base10_parse().ok(),
        _ => None,
    }
}

/// A rate `"100/s"`, `"5/10s"`: a whole number of starts (at least 1) per a period (at least
/// a millisecond); a bare unit is one of it.
fn parse_rate(text: &str) -> Result<(u32, f64), String> {
    let Some((count, per)) = text.split_once('/') else {
        return Err("there is no `/` between the starts and the period".to_owned());
    };
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a whole number of starts", count.trim()))?;
    if count == 0 {
        return Err("0 starts per period would never start the task".to_owned());
    }
    let per = per.trim();
    let seconds = if per.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(per)?
    } else {
        parse_duration(&format!("1{per}"))?
    };
    if seconds < 0.001 {
        return Err("the period is shorter than a millisecond".to_owned());
    }
    Ok((count, seconds))
}

/// `max_running` written as a literal must be a whole number at least 1 (a `const` is
/// checked when the task is registered).
fn check_max_running(value: &Expr, errors: &mut Errors) {
    let fine = match value {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(int),
            ..
        }) => int.base10_parse::<u32>().is_ok_and(|max| max >= 1),
        Expr::Lit(_) | Expr::Unary(_) => false,
        _ => true,
    };
    if !fine {
        errors.spanned(
            value,
            "`max_running` is how many runs of the task may go at once across the app: a whole number at least 1, like `max_running = 5`",
        );
    }
}

/// Seconds in `"1h30m"`: one or more numbers, each followed by a unit (`ms`, `s`, `m`, `h`,
/// `d`).
fn parse_duration(text: &str) -> Result<f64, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{}` is not a number", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(format!("`{number}` has no unit")),
            other => return Err(format!("`{other}` is not a unit (ms, s, m, h, d)")),
        };
        total += number * scale;
        rest = rest[unit_len..].trim_start();
    }
    if total.is_finite() {
        Ok(total)
    } else {
        Err("it is too long".to_owned())
    }
}

/// A literal fraction must be from 0 to 1 (a `const` is checked when the tasks are loaded).
fn check_fraction(value: &Expr, option: &str, errors: &mut Errors) {
    let Expr::Lit(syn::ExprLit { lit, .. }) = value else {
        if let Expr::Unary(_) = value {
            errors.spanned(value, format!("`{option}` is a number from 0 to 1"));
        }
        return;
    };
    let fraction = match lit {
        syn::Lit::Int(int) => int.base10_parse::<f64>().ok(),
        syn::Lit::Float(float) => float.base10_parse::<f64>().ok(),
        _ => None,
    };
    match fraction {
        Some(fraction) if (0.0..=1.0).contains(&fraction) => {}
        _ => errors.spanned(
            value,
            format!("`{option}` is a number from 0 to 1: the part of each wait taken off at random, like `{option} = 0.5`"),
        ),
    }
}

fn check_seconds(value: &Expr, option: &str, errors: &mut Errors) {
    let (negative, literal) = match value {
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => (true, &**expr),
        other => (false, other),
    };
    let Expr::Lit(syn::ExprLit { lit, .. }) = literal else {
        return;
    };
    let seconds = match lit {
        syn::Lit::Int(int) => int.base10_parse::<f64>().ok(),
        syn::Lit::Float(float) => float.base10_parse::<f64>().ok(),
        _ => {
            errors.spanned(
                value,
                format!("`{option}` takes a number of seconds, like `{option} = 2.5`, or a duration, like `{option} = \"30s\"`"),
            );
            return;
        }
    };
    match seconds {
        Some(seconds) if negative && seconds > 0.0 => errors.spanned(
            value,
            format!("`{option}` cannot be negative\n= help: give a number of seconds, like `{option} = 2.5`"),
        ),
        Some(seconds) if !seconds.is_finite() => errors.spanned(
            value,
            format!("`{option}` must be a finite number of seconds"),
        ),
        _ => {}
    }
}

fn check_name(name: &LitStr, errors: &mut Errors) {
    let value = name.value();
    if value.is_empty() {
        errors.spanned(name, "the task name cannot be empty");
    } else if value.contains(':') {
        errors.spanned(
            name,
            format!(
                "task name `{value}` contains `:`, which separates the fields of queue entries\n\
                 = help: use another separator, for example `{}`",
                value.replace(':', ".")
            ),
        );
    }
}

/// A queue name: 1 to 64 ASCII letters, digits, `_`, `-` and `.` (the rule of
/// `qtasks::queues::check_queue_name`, which the macro crate cannot call).
fn check_queue(queue: &LitStr, errors: &mut Errors) {
    let value = queue.value();
    let bad = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    let problem = if value.is_empty() {
        Some("a queue name cannot be empty".to_owned())
    } else if value.len() > 64 {
        Some(format!(
            "a queue name is at most 64 characters; `{value}` has {}",
            value.len()
        ))
    } else {
        bad.map(|bad| {
            let fixed: String = value
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!(
                "queue `{value}` contains `{bad}`: a queue name takes ASCII letters, digits, `_`, `-` and `.`\n= help: did you mean `{fixed}`?"
            )
        })
    };
    if let Some(problem) = problem {
        errors.spanned(queue, problem);
    }
}

/// `[A, B]`: the error types `retry_on_exc` matches.
fn parse_types(list: &Expr, errors: &mut Errors) -> Vec<Type> {
    let Expr::Array(array) = list else {
        errors.spanned(
            list,
            "`retry_on_exc` takes a list of error types: `retry_on_exc = [std::io::Error]`",
        );
        return Vec::new();
    };
    let mut types = Vec::new();
    for element in &array.elems {
        match element {
            Expr::Path(path) => types.push(Type::Path(syn::TypePath {
                qself: None,
                path: path.path.clone(),
            })),
            other => errors.spanned(other, "an entry of `retry_on_exc` must be an error type"),
        }
    }
    types
}

/// `[A, B]`: a list of expressions (statics).
fn parse_list(list: &Expr, option: &str, errors: &mut Errors) -> Vec<Expr> {
    match list {
        Expr::Array(array) => array.elems.iter().cloned().collect(),
        other => {
            errors.spanned(
                other,
                format!("`{option}` takes a list of statics: `{option} = [MY_MIDDLEWARE]`"),
            );
            Vec::new()
        }
    }
}

fn parse_tags(list: &Expr, errors: &mut Errors) -> Vec<LitStr> {
    let Expr::Array(array) = list else {
        errors.spanned(
            list,
            "`tags` takes a list of strings: `tags = [\"billing\", \"slow\"]`",
        );
        return Vec::new();
    };
    let mut tags = Vec::new();
    for element in &array.elems {
        match element {
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(tag),
                ..
            }) => tags.push(tag.clone()),
            other => errors.spanned(other, "a tag must be a string literal"),
        }
    }
    tags
}

/// Validates the fn and splits its parameters into the context and the decoded ones.
pub(crate) fn parse_fn(options: TaskOptions, function: ItemFn, errors: &mut Errors) -> Task {
    let sig = &function.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.spanned(
            &sig.generics,
            "a task fn cannot be generic: the worker decodes its arguments from JSON and must know \
             their concrete types",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.spanned(constness, "a task fn cannot be `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(
            unsafety,
            "a task fn cannot be `unsafe`: the worker calls it like any other fn",
        );
    }

    let mut inputs = sig.inputs.iter();
    let mut context = None;
    if options.echo {
        match inputs.next() {
            Some(FnArg::Typed(first)) => context = Some((*first.ty).clone()),
            Some(FnArg::Receiver(receiver)) => {
                errors.spanned(receiver, "a task fn cannot take `self`; tasks are free fns");
            }
            None => errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "with `echo = true` the first parameter receives the task's context\n\
                 = help: add it: `ctx: qtasks::TaskContext`",
            )),
        }
    }

    let mut params = Vec::new();
    for input in inputs {
        let typed = match input {
            FnArg::Typed(typed) => typed,
            FnArg::Receiver(receiver) => {
                errors.spanned(receiver, "a task fn cannot take `self`; tasks are free fns");
                continue;
            }
        };
        let name = match &*typed.pat {
            Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none() => {
                ident.ident.clone()
            }
            other => {
                errors.spanned(
                    other,
                    "a task parameter must be a plain name (`amount: u64`): keyword arguments are \
                     matched by parameter name",
                );
                continue;
            }
        };
        check_param_type(&typed.ty, options.echo, errors);
        params.push(Param {
            name,
            ty: (*typed.ty).clone(),
            extractor: is_extractor(&typed.ty),
        });
    }
    if let Some(cron) = &options.cron
        && let Some(first) = params.iter().find(|param| !param.extractor)
    {
        errors.spanned(
            &first.name,
            format!(
                "a task with `cron = {:?}` is added by its schedule with no arguments, so it cannot take `{}`\n= help: remove the parameter, or schedule calls with arguments with `app.schedules().add(name, Schedule::cron(..)?, {}::call(..))`",
                cron.value(),
                first.name,
                function.sig.ident,
            ),
        );
    }
    Task {
        options,
        function,
        context,
        params,
    }
}

/// A cron expression must parse: 5 fields, or 6 with seconds first.
fn check_cron(expression: &LitStr, errors: &mut Errors) {
    let parsed = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(&expression.value());
    if let Err(error) = parsed {
        errors.spanned(
            expression,
            format!(
                "invalid cron expression: {error}\n= help: 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. \"0 */5 * * * *\" for every five minutes"
            ),
        );
    }
}

fn check_param_type(ty: &Type, echo: bool, errors: &mut Errors) {
    match ty {
        Type::Reference(reference) => {
            let hint = match &*reference.elem {
                Type::Path(path) if path.path.is_ident("str") => "use `String` instead of `&str`",
                Type::Slice(_) => "use `Vec<T>` instead of `&[T]`",
                _ => "take the value itself",
            };
            errors.spanned(
                ty,
                format!("a task parameter cannot be a reference: arguments are decoded from JSON into owned values; {hint}"),
            );
        }
        Type::ImplTrait(_) => errors.spanned(
            ty,
            "a task parameter cannot be `impl Trait`: use a concrete type",
        ),
        Type::Path(path)
            if !echo
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "TaskContext") =>
        {
            errors.spanned(
                ty,
                "this task takes a `TaskContext`, which the executor passes only with `echo = true`\n\
                 = help: write `#[qtasks::task(echo = true)]`",
            );
        }
        _ => {}
    }
}

/// `Depends<T>` and `State<T>` (plain or `qtasks::`-qualified, with one type argument) are filled
/// by the executor.
fn is_extractor(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    let segments = &path.path.segments;
    let Some(last) = segments.last() else {
        return false;
    };
    let qualified_ok = segments.len() == 1 || segments.first().is_some_and(|s| s.ident == "qtasks");
    let one_argument =
        matches!(&last.arguments, syn::PathArguments::AngleBracketed(a) if a.args.len() == 1);
    qualified_ok && one_argument && (last.ident == "Depends" || last.ident == "State")
}
