//! Parsing and validating `#[qtasks::plugin(on = "..")]` against the trigger catalogue.

use proc_macro2::{Span, TokenStream};
use qtasks_triggers::{Suggestion, Trigger, TriggerKind, suggest};
use syn::parse::Parser;
use syn::{Expr, FnArg, Ident, ItemFn, LitStr, Path, Type};

use crate::errors::Errors;

/// The validated options: the trigger, and the task the handler recovers (`task = ..`).
pub(crate) struct PluginOptions {
    pub(crate) trigger: Trigger,
    pub(crate) task: Option<Path>,
}

/// The validated `on = ".."` and `task = ..`.
pub(crate) fn parse_options(args: TokenStream, errors: &mut Errors) -> Option<PluginOptions> {
    let mut on: Option<LitStr> = None;
    let mut task: Option<Path> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("task") {
            let value: Expr = meta.value()?.parse()?;
            match value {
                Expr::Path(path) if path.qself.is_none() => {
                    if task.is_some() {
                        errors.spanned(
                            &meta.path,
                            "`task` is given more than once; a handler recovers one task",
                        );
                    }
                    task = Some(path.path);
                }
                other => errors.spanned(
                    other,
                    "`task` takes the task fn's name, not a string\n\
                     = help: write `task = my_task`, naming a fn marked `#[qtasks::task]`",
                ),
            }
        } else if meta.path.is_ident("on") {
            let value: Expr = meta.value()?.parse()?;
            match value {
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(name),
                    ..
                }) => {
                    if on.is_some() {
                        errors.spanned(
                            &meta.path,
                            "`on` is given more than once; a handler handles one trigger",
                        );
                    }
                    on = Some(name);
                }
                other => errors.spanned(
                    other,
                    "`on` takes the trigger name as a string\n\
                     = help: write `on = \"task_executor_run_task_trigger_error\"`",
                ),
            }
        } else {
            if meta.input.peek(syn::Token![=]) {
                let _: Expr = meta.value()?.parse()?;
            }
            let key = meta
                .path
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_default();
            errors.spanned(
                &meta.path,
                format!("unknown option `{key}` of `#[qtasks::plugin]`\n= note: the options are `on = \"trigger_name\"` and `task = my_task` (the task a `task_executor_run_task_trigger_error` handler recovers)"),
            );
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        errors.push(error);
        return None;
    }
    let Some(on) = on else {
        if errors.is_empty() {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing the trigger: write `#[qtasks::plugin(on = \"trigger_name\")]`, for example \
                 `on = \"task_executor_run_task_trigger_error\"`",
            ));
        }
        return None;
    };
    let name = on.value();
    match Trigger::from_name(&name) {
        Some(trigger) => {
            if let Some(task) = &task
                && trigger != Trigger::TaskExecutorRunTaskTriggerError
            {
                errors.spanned(
                    task,
                    format!(
                        "`task = ..` names the task whose failure the handler recovers; `{name}` is not that trigger\n\
                         = help: use it with `on = \"task_executor_run_task_trigger_error\"`, or drop it"
                    ),
                );
                return None;
            }
            Some(PluginOptions { trigger, task })
        }
        None => {
            let help = match suggest(&name) {
                Suggestion::DidYouMean(close) => {
                    format!("= help: did you mean `{}`?", close.name())
                }
                Suggestion::SameComponent(component) => {
                    let names: Vec<&str> = component.triggers().map(Trigger::name).collect();
                    format!(
                        "= help: the `{}` triggers are: {}",
                        component.prefix(),
                        names.join(", ")
                    )
                }
                Suggestion::None => {
                    "= note: see `qtasks::Trigger` for the list of triggers".to_owned()
                }
            };
            errors.spanned(&on, format!("unknown trigger `{name}`\n{help}"));
            None
        }
    }
}

/// The handler's parameter type, after checking the shape of the fn.
pub(crate) fn check_handler(
    function: &ItemFn,
    trigger: Trigger,
    errors: &mut Errors,
) -> Option<Type> {
    let sig = &function.sig;
    let expected = expected_signature(function, trigger);
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.spanned(
            &sig.generics,
            format!("a plugin handler cannot be generic\n= help: {expected}"),
        );
    }
    let mut inputs = sig.inputs.iter();
    let param = match (inputs.next(), inputs.next()) {
        (Some(FnArg::Typed(param)), None) => param,
        _ => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                format!("a handler for `{}` takes exactly one parameter, the trigger's data\n= help: {expected}", trigger.name()),
            ));
            return None;
        }
    };
    match &*param.ty {
        Type::Reference(reference) if reference.mutability.is_none() => Some((*param.ty).clone()),
        other => {
            errors.spanned(
                other,
                format!(
                    "a handler takes the trigger's data by shared reference\n= help: {expected}"
                ),
            );
            None
        }
    }
}

fn expected_signature(function: &ItemFn, trigger: Trigger) -> String {
    let asyncness = if function.sig.asyncness.is_some() {
        "async "
    } else {
        ""
    };
    let output = match trigger.kind() {
        TriggerKind::Notify => "",
        TriggerKind::Replace => " -> Option<..>",
    };
    format!(
        "expected `{asyncness}fn {}(event: &qtasks::triggers::{}<'_>){output}`",
        function.sig.ident,
        trigger.variant_str()
    )
}
